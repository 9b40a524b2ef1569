"""carvelab.search_space."""
