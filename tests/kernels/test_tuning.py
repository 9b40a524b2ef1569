"""kernels/tuning.py: configs compiled in parallel before the autotuner times them.

Compiling needs a GPU, so the autotuner and the JIT function here are stand-ins that
follow Triton's contract: the autotuner times its pruned configs one by one through
``_bench``; a JIT function's ``run(..., warmup=True)`` compiles without launching and,
while an ``AsyncCompileMode`` is active, submits the compile to that mode's executor.
"""
import inspect
import threading

import pytest
import triton

from carvelab.kernels import tuning

pytestmark = pytest.mark.skipif(tuning.AsyncCompileMode is None, reason="this Triton cannot compile asynchronously")


class FakeJit:
    def __init__(self, fail_on=None):
        self.compiled, self.launched, self.fail_on = [], [], fail_on

    def run(self, *args, grid, warmup, **kwargs):
        from triton.runtime._async_compile import active_mode

        key = (kwargs.get("BV"), kwargs["num_warps"])
        if not warmup:
            self.launched.append(key)
            return None
        mode = active_mode.get()
        assert mode is not None, "warm-up compiles must run under AsyncCompileMode"

        def compile_():
            if key == self.fail_on:
                raise RuntimeError("out of resources")
            self.compiled.append((key, threading.current_thread().name))
            return key

        # Triton 3.6 takes (key, compile, finalize); later versions add a cleanup callback
        callbacks = (lambda kernel: None, lambda future: None)[:len(inspect.signature(mode.submit).parameters) - 2]
        return mode.submit(key, compile_, *callbacks)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.run(*args, grid=grid, warmup=False, **kwargs)


class FakeAutotuner:
    """Times every config through ``_bench`` unless its choice is cached."""

    base_fn = type("f", (), {"__name__": "fake_kernel"})

    def __init__(self, configs, cached=False, fail_on=None):
        self.configs, self.cached, self.fn = configs, cached, FakeJit(fail_on)
        self.timed, self.compiled_when_timing = [], []
        self.best_config = None

    def prune_configs(self, kwargs):
        return [c for c in self.configs if c.kwargs.get("BV", 0) <= kwargs["V"]]

    def _bench(self, *args, config, **meta):
        self.compiled_when_timing.append(len(self.fn.compiled))
        self.timed.append(config)
        return [float(config.num_warps)] * 3

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            kwargs = dict(kwargs, grid=grid, warmup=False)
            if not self.cached:
                timings = {c: self._bench(*args, config=c, **kwargs)[0] for c in self.prune_configs(kwargs)}
                self.best_config = min(timings, key=timings.get)
            else:
                self.best_config = self.configs[0]
            return self.fn.run(*args, **{**kwargs, **self.best_config.all_kwargs()})

        return run


def configs():
    return [triton.Config({"BV": bv}, num_warps=w) for bv in (16, 32, 64) for w in (2, 4)]


def test_every_config_to_be_timed_is_compiled_in_threads_before_the_first_is_timed():
    auto = FakeAutotuner(configs())
    kernel = tuning.TunedKernel(auto)
    kernel[(1,)]("x", V=32)
    # BV=64 is pruned for V=32: four configs compiled, all before the first timing
    assert sorted(k for k, _ in auto.fn.compiled) == [(16, 2), (16, 4), (32, 2), (32, 4)]
    assert auto.compiled_when_timing == [4, 4, 4, 4]
    assert all(thread != threading.current_thread().name for _, thread in auto.fn.compiled)
    assert auto.fn.launched == [(16, 2)]  # the fastest (fewest warps here) ran the call


def test_nothing_is_compiled_in_advance_when_the_autotuner_does_not_time():
    auto = FakeAutotuner(configs(), cached=True)  # its choice came from the Triton cache
    kernel = tuning.TunedKernel(auto)
    kernel[(1,)]("x", V=32)
    assert auto.fn.compiled == [] and auto.timed == []
    assert kernel.compile_first is False


def test_a_signature_is_tuned_once_and_later_launches_skip_the_autotuner():
    auto = FakeAutotuner(configs())
    kernel = tuning.TunedKernel(auto)
    kernel[(1,)]("x", V=32)
    kernel[(2,)]("x", V=32)
    assert len(auto.timed) == 4 and len(auto.fn.compiled) == 4
    assert auto.fn.launched == [(16, 2), (16, 2)]
    kernel[(1,)]("x", V=64)  # a new signature: compiled and timed again, all six configs
    assert len(auto.timed) == 10 and len(auto.fn.compiled) == 10


def test_a_config_that_fails_to_compile_is_left_to_the_autotuner():
    auto = FakeAutotuner(configs(), fail_on=(32, 4))
    kernel = tuning.TunedKernel(auto)
    kernel[(1,)]("x", V=32)
    assert sorted(k for k, _ in auto.fn.compiled) == [(16, 2), (16, 4), (32, 2)]
    assert len(auto.timed) == 4  # still timed (and, on a GPU, skipped by the autotuner)


def test_a_failing_parallel_compile_falls_back_to_the_autotuners_own(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no async compile here")

    monkeypatch.setattr(tuning, "compile_in_parallel", broken)
    auto = FakeAutotuner(configs())
    tuning.TunedKernel(auto)[(1,)]("x", V=32)
    assert len(auto.timed) == 4 and auto.fn.launched == [(16, 2)]
    assert "compiling its configs one by one" in caplog.text
