"""carvelab.carve_models."""
