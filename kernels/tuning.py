"""Autotuning of the Triton kernels: the config spaces, choices kept in the Triton cache,
configs compiled in parallel, and launches that skip the autotuner once it has chosen.

Cold cost. The first call at a new shape compiles every config of every kernel it runs
and times them; a trial of the chunked kernels compiles about a hundred configs. Triton's
autotuner compiles each config just before timing it, one after another. ``TunedKernel``
compiles all of them first, in parallel threads (Triton's compiler releases the GIL for
most of its work), then lets the autotuner time them from its in-process cache. Nothing
is compiled in advance when the autotuner will not time (its choice is already in the
Triton cache, or there is one config).
"""
from __future__ import annotations

import inspect
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import triton

from carvelab.kernels._triton_common import triton_interpreted

try:  # Triton >= 3.4: compiles submitted to an executor while the mode is active
    from triton.runtime._async_compile import AsyncCompileMode
except ImportError:  # pragma: no cover - older Triton: configs compile one by one
    AsyncCompileMode = None

logger = logging.getLogger(__name__)


def autotune_configs(warps=(2, 4, 8), stages=(1, 2, 3), value_blocks: tuple = ()) -> list:
    """num_warps x num_stages (x value tile ``BV``, for kernels that take it) configs to
    autotune over on a GPU.

    One config only in the interpreter (which accepts no more; BV=32, so tests cover
    several value tiles) and when ``CARVELAB_AUTOTUNE=0`` (quick GPU test runs: no
    per-shape tuning sweep; the widest BV)."""
    if triton_interpreted() or os.environ.get("CARVELAB_AUTOTUNE", "1") == "0":
        meta = {"BV": 32 if triton_interpreted() else max(value_blocks)} if value_blocks else {}
        return [triton.Config(meta, num_warps=4, num_stages=1)]
    return [triton.Config({} if bv is None else {"BV": bv}, num_warps=w, num_stages=s)
            for bv in (value_blocks or (None,)) for w in warps for s in stages if safe_value_tile(bv, w)]


def safe_value_tile(bv, num_warps: int) -> bool:
    """At least 4 value columns per warp. Compiled on an H100 with Triton 3.6, the state
    kernels with BV=16 and 8 warps hit illegal addresses or returned wrong outputs
    (0.7 relative error) at B=4, T=4096, H=16, d=128, while every other value tile, warp
    and stage combination gave identical outputs (up to bf16 rounding with 2 warps)."""
    return bv is None or bv >= 4 * num_warps


def _fit_value_tile(configs, named_args, **kwargs):
    """Drop configs whose value tile is wider than needed for V (keep at least one)."""
    V = kwargs.get("V", named_args.get("V"))
    if V is None:
        return configs
    fit = [c for c in configs if c.kwargs.get("BV", 0) <= max(16, triton.next_power_of_2(V))]
    return fit or configs[:1]


def autotune(configs: list, key: list, restore_value: tuple = ()):
    """``triton.autotune`` whose choices persist in the Triton cache (``TRITON_CACHE_DIR``),
    wrapped in a ``TunedKernel``.

    A second process (a second trial on the same node) at the same shapes then neither
    recompiles nor re-times the configurations. ``restore_value`` names the arguments a
    kernel updates in place: timing the configs runs the kernel many times on the same
    arguments, so those are saved before and restored after each run (without it the
    first call at a new shape would return a result transformed once per timed run)."""
    kwargs = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    if restore_value:
        kwargs["restore_value"] = list(restore_value)
    if any("BV" in c.kwargs for c in configs):
        kwargs["prune_configs_by"] = {"early_config_prune": _fit_value_tile}
    tune = triton.autotune(configs=configs, key=key, **kwargs)
    return lambda fn: TunedKernel(tune(fn))


class TunedKernel:
    """An autotuned kernel that launches its chosen configuration directly once chosen.

    ``kernel[grid](*args, **kwargs)`` goes through Triton's autotuner the first time for
    each launch signature (the keyword arguments, the non-tensor positional arguments and
    the tensors' dtypes: a superset of any autotune key here) and remembers the config it
    chose; later launches with that signature call the JIT function with that config, as
    the autotuner itself would, without its per-launch Python (about 40 µs per launch on
    an H100 host, half of the launch cost: the content-gate loop and small trials issue
    thousands). Every config computes the same function, so the choice affects speed only.
    Attribute reads (``cache``, ``configs``, ``fn``, ...) go to the autotuner.

    When the autotuner times configs (a new shape, no choice in the Triton cache), it
    first gets them all compiled in parallel (``compile_in_parallel``)."""

    def __init__(self, autotuner) -> None:
        self.autotuner = autotuner
        self.chosen: dict = {}
        self.compile_first = False  # set while the autotuner runs for a new signature
        time_one = autotuner._bench

        def time_config(*args, config, **meta):  # the autotuner times its configs one by one
            if self.compile_first:
                self.compile_first = False
                try:
                    compile_in_parallel(autotuner, args, meta)
                except Exception:  # noqa: BLE001 - a speed-up only: the autotuner compiles as usual
                    logger.warning("parallel compile of %s failed; compiling its configs one by one",
                                   autotuner.base_fn.__name__, exc_info=True)
            return time_one(*args, config=config, **meta)

        autotuner._bench = time_config

    def __getattr__(self, name: str):
        if name in ("autotuner", "chosen", "compile_first"):  # not yet set (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.autotuner, name)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            sig = (tuple(kwargs.items()), tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args))
            config = self.chosen.get(sig)
            if config is None:
                self.compile_first = True
                try:
                    out = self.autotuner[grid](*args, **kwargs)
                finally:
                    self.compile_first = False
                self.chosen[sig] = self.autotuner.best_config
                return out
            return self.autotuner.fn[grid](*args, **kwargs, **config.all_kwargs())

        return launch


def compile_in_parallel(autotuner, args: tuple, meta: dict) -> None:
    """Compile every config ``autotuner`` is about to time for this launch, in threads
    (nothing where Triton cannot compile asynchronously or there is one config).

    A config that fails to compile is left to the autotuner, which meets the same error
    when it times that config and skips it, as it always did."""
    configs = autotuner.prune_configs(meta)
    if AsyncCompileMode is None or len(configs) < 2:
        return
    with ThreadPoolExecutor(max_workers=min(len(configs), os.cpu_count() or 1)) as pool:
        with AsyncCompileMode(pool, ignore_errors=True):
            for config in configs:
                try:
                    autotuner.fn.run(*args, **{**meta, **config.all_kwargs(), "warmup": True})
                except Exception as exc:  # noqa: BLE001 - the autotuner reports it when timing
                    logger.debug("compiling %s with %s failed: %s", autotuner.base_fn.__name__, config, exc)
