"""Pure domain: tasks, credits and the model catalog. No HTTP, no SQL."""
