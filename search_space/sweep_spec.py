"""The sweep file schema (OmegaConf structured configs, struct mode).

A sweep file::

    name: quickstart
    base: {preset: gdn2, model: {d_model: 32}, task: {name: mqar}, train: {steps: 100}}
    mode: search                 # search | grid | ablation
    space:                       # canonical axes and dotted paths into the trial config
      erase_axis: [key, value]
      content_gate: [off, on]
      train.lr: {type: log_float, low: 1.0e-3, high: 1.0e-2}
    ablation: {changes: [{erase_axis: value}, {content_gate: on}]}   # mode: ablation
    tune: {train.lr: [1.0e-3, 3.0e-3, 1.0e-2]}   # nuisance values trained at every point (optional)
    suite: {name: mad, settings: all}         # every point at every setting of a task suite (optional;
                                              # settings: all | baseline | [setting labels])
    objectives: [{metric: val_accuracy, direction: maximize}, {metric: params, direction: minimize}]
    sampler: {name: tpe, seed: 0}
    pruner: {name: pareto, metric: val_accuracy, warmup_steps: 20}
    seeds: [0]
    budget: {trials: 16, seconds: 600}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, concurrency: 2}
    tracking: {backend: mlflow, uri: null, experiment: null}   # null = sqlite:///<sweep_dir>/mlflow.db
    storage: null                             # null = sqlite:///<sweep_dir>/optuna.db

Loading and validation live in ``carvelab.search_space.sweep_loading``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

MODES = ("search", "grid", "ablation")
SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("categorical", "int", "float", "log_float")

# Canonical axes -> the trial-config field they set.
AXES = {
    "erase_axis": "model.erase_axis",
    "content_gate": "model.content_gate",
    "content_rank": "model.content_rank",
    "content_target": "model.content_target",
    "write_gate": "model.write_gate",
    "hybrid_ratio": "model.hybrid_ratio",
    "chunk_size": "model.chunk_size",
    "covariance": "model.covariance",
    "eigen_range": "model.eigen_range",
}
# The parameter a sweep with ``suite:`` adds to its points: the label of a task setting
# (carvelab.search_space.suite_loading).
SUITE_PARAM = "suite"

# Metrics a trial reports; cost metrics are known before training starts.
COST_METRICS = ("params", "flops_per_token", "state_bytes")
# Speed metrics measured with the device to the trial alone (trials/timing_slot.py); the
# figure measured while trials share the device is tokens_per_s_contended.
ISOLATED_METRICS = ("tokens_per_s", "step_ms")
# The untrained model on validation (train.eval_at_init): checks, e.g., that two presets match at init.
INIT_METRICS = ("init_val_loss", "init_val_accuracy")
METRICS = ("val_accuracy", "val_loss", "val_ppl", "train_loss", "tokens_per_s", "step_ms", "tokens_per_s_contended",
           "peak_mem_mb", "wall_s") + COST_METRICS + INIT_METRICS
# Metrics whose intermediate values are reported during training (prunable).
INTERMEDIATE_METRICS = ("val_accuracy", "val_loss", "val_ppl", "train_loss")


@dataclass
class ObjectiveSpec:
    metric: str = "val_accuracy"
    direction: str = "maximize"


@dataclass
class SamplerSpec:
    name: str = "tpe"
    seed: int = 0
    n_startup_trials: int = 4     # tpe/gp: random trials before the model is used
    population_size: int = 8      # nsga2


@dataclass
class BudgetSpec:
    trials: Optional[int] = None  # training trials (every seed counts)
    seconds: Optional[float] = None  # wall clock of the sweep; running trials finish


@dataclass
class ResourcesSpec:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0   # fractional GPUs are really fractional (0.25 = 4 per GPU)
    concurrency: int = 1
    trial_timeout_s: Optional[float] = None
    max_retries: int = 1          # re-runs of a trial whose worker process died
    memory_mb: Optional[float] = None   # Ray memory reserved per trial (none: not reserved)
    custom: Dict[str, float] = field(default_factory=dict)  # Ray custom resources per trial
    pending_timeout_s: Optional[float] = None  # a trial no live node can run is failed (unschedulable) after this


@dataclass
class TrackingSpec:
    backend: str = "mlflow"       # a registered tracker (carvelab.trials.tracking): mlflow | none | ...
    uri: Optional[str] = None
    experiment: Optional[str] = None


@dataclass
class AblationSpec:
    changes: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class SweepFile:
    """Raw schema of a sweep file (types checked by OmegaConf, values by sweep_loading)."""

    name: str = ""
    base: Any = None
    mode: str = "search"
    space: Dict[str, Any] = field(default_factory=dict)
    ablation: AblationSpec = field(default_factory=AblationSpec)
    objectives: List[ObjectiveSpec] = field(default_factory=lambda: [ObjectiveSpec()])
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: Any = None            # a mapping, typed by its pruner's spec class (carvelab.trials.pruners)
    seeds: List[int] = field(default_factory=lambda: [0])
    tune: Dict[str, Any] = field(default_factory=dict)  # dotted path -> list of values
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    storage: Optional[str] = None
    claims: List[Any] = field(default_factory=list)   # validated by search_space.claims
    sizes: Dict[str, Any] = field(default_factory=dict)  # size name -> dotted overrides (claims.apply_size)
    suite: Any = None             # a suite name or {name, settings}; validated by search_space.suite_loading


@dataclass
class ParamSpec:
    """One dimension of the space, after validation. ``path`` is a dotted trial-config path."""

    name: str                     # as written in the sweep file (axis name or dotted path)
    path: str
    type: str
    choices: Optional[list] = None
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None


@dataclass
class ClaimSpec:
    """A published claim a sweep checks (validated by ``search_space.claims``): the effect of
    ``change`` against ``against`` (None: the baseline), paired by seed, on ``metric``."""

    name: str
    change: Dict[str, Any]        # one of the sweep's ablation.changes, as written there
    metric: str                   # a reported metric: test_X, a cost, a speed or memory figure
    expect: str                   # increase | decrease | relative (the claimed relative change)
    against: Optional[Dict[str, Any]] = None
    relative: Optional[float] = None   # expect relative: claimed (change - against) / |against|
    tolerance: Optional[float] = None  # expect relative: the claim holds within +- tolerance
    source: str = ""


@dataclass
class SweepSpec:
    """A validated sweep: what the scheduler consumes."""

    name: str
    base: dict                    # a trial-config mapping (loadable by load_trial_config)
    mode: str
    params: List[ParamSpec]
    changes: List[Dict[str, Any]]  # ablation: one-factor changes as {path: value}
    objectives: List[ObjectiveSpec]
    sampler: SamplerSpec
    pruner: Any                   # an instance of the named pruner's spec class (a PrunerSpec)
    seeds: List[int]
    budget: BudgetSpec
    resources: ResourcesSpec
    tracking: TrackingSpec
    storage: Optional[str]
    source: str = "<sweep>"
    # With ``task.name`` swept: base ``task:`` keys that only other swept tasks take, per task.
    task_keys: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    # Nuisance hyperparameters (categorical ParamSpecs): every point is trained at every
    # combination of their values and every seed; the dashboards select one per point on
    # the validation split (carvelab.dashboards.selection).
    tune: List[ParamSpec] = field(default_factory=list)
    # Published claims the sweep checks (mode ablation); a verdict each (dashboards/claims.py).
    claims: List[ClaimSpec] = field(default_factory=list)
    # ``suite:``: the suite's name and {label: task mapping} of its selected settings; the
    # points' ``suite`` parameter takes the labels (points.point_config applies the mapping).
    suite: Optional[str] = None
    suite_settings: Dict[str, Dict[str, Any]] = field(default_factory=dict)
