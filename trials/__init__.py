"""carvelab.trials."""
