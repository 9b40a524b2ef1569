"""Sweep orchestration: the driver's loop (driver), the one place a trial changes state
(recorder), the Optuna study and its sampler (study, sampling), Ray (scheduler), the pruning
broker (broker) and the sweep callbacks (callbacks)."""
