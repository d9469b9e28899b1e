"""Use cases. Each opens one unit of work, does one whole state change and commits it."""
