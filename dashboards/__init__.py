"""carvelab.dashboards."""
