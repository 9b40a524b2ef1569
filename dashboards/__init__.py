"""carvelab.dashboards: a sweep's trials as polars tables, Pareto fronts, hypervolume,
ablation statistics, MLflow publishing of the front, and export of winning configs."""
from carvelab.dashboards.frame import SweepData, front_table, hypervolume_history, open_sweep, trials_frame
from carvelab.dashboards.pareto import hypervolume, non_dominated_ranks

__all__ = ["SweepData", "front_table", "hypervolume", "hypervolume_history", "non_dominated_ranks",
           "open_sweep", "trials_frame"]
