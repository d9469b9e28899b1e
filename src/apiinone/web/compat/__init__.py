"""Other vendors' API shapes at the edge (Anthropic Messages), translated to and from the canonical chat."""
