"""The training step replayed from one CUDA graph (trials/step_graph.py) trains exactly as
the eager step does. Needs a GPU with compiled kernels (TRITON_INTERPRET=0); on the CPU a
trial runs its step eagerly and says so."""
import dataclasses
import os

import pytest
import torch

from carvelab.carve_models.lm import HybridLM
from carvelab.carve_models.presets import preset_config
from carvelab.search_space.trial_config import TrainConfig
from carvelab.trials import step_graph
from carvelab.trials.training import make_optimizer, optimizer_step, set_lr

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
needs_gpu = pytest.mark.skipif(not GPU, reason="CUDA graphs of compiled kernels need a GPU (TRITON_INTERPRET=0)")


def _train(cfg, graphed: bool, steps: int = 7, dtype=torch.bfloat16):
    torch.manual_seed(0)
    model = HybridLM(cfg).cuda()
    opt = make_optimizer(model, TrainConfig(lr=3e-3), capturable=True)
    autocast = torch.autocast("cuda", dtype=dtype, cache_enabled=False)
    step = step_graph.GraphedStep(model, opt, 1.0, autocast) if graphed else None
    gen = torch.Generator().manual_seed(1)
    losses = []
    for i in range(steps):
        x = torch.randint(0, cfg.vocab_size, (4, 48), generator=gen).cuda()
        y = torch.randint(0, cfg.vocab_size, (4, 48), generator=gen).cuda()
        set_lr(opt, 3e-3 * (i + 1) / steps)  # a schedule: the graph must read the new rate
        loss = step(x, y) if graphed else optimizer_step(model, opt, x, y, 1.0, autocast)
        losses.append(float(loss))
    return losses, model, step


@needs_gpu
@pytest.mark.parametrize("preset, overrides", [("gdn2", {}), ("carve", {}), ("bayes", {"hybrid_ratio": "1:1"})])
def test_graphed_steps_train_as_eager_steps_do(preset, overrides):
    cfg = preset_config(preset, d_model=64, n_layers=2, n_heads=2, vocab_size=64, chunk_size=16, init="matched",
                        **overrides)
    eager_losses, eager, _ = _train(cfg, graphed=False)
    graph_losses, graphed, step = _train(cfg, graphed=True)
    assert step.captured and step.calls == 7
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    for (name, a), (_, b) in zip(eager.named_parameters(), graphed.named_parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name


@needs_gpu
def test_a_batch_of_another_shape_is_refused_after_capture():
    cfg = preset_config("gdn2", d_model=32, n_layers=1, n_heads=2, vocab_size=32, chunk_size=16)
    _, model, step = _train(cfg, graphed=True, steps=step_graph.WARMUP + 1)
    x = torch.zeros(4, 40, dtype=torch.long, device="cuda")
    with pytest.raises(ValueError, match=r"captured for inputs of shape \(4, 48\).*got \(4, 40\).*train.cuda_graph"):
        step(x, x)


def test_train_cuda_graph_must_be_a_bool():
    with pytest.raises(ValueError, match="train.cuda_graph='yes' must be true or false"):
        TrainConfig(cuda_graph="yes")


def test_a_cpu_trial_runs_its_step_eagerly_and_records_it(tmp_path):
    from carvelab.search_space.loading import load_trial_config
    from carvelab.trials.trial import run_trial

    config = load_trial_config("trials/configs/tiny_mqar.yaml", ["train.steps=3", "train.device=cpu"])
    result = run_trial(config)
    assert result.step_mode == "eager" and result.precision == "exact"


@needs_gpu
def test_a_gpu_trial_records_its_graphed_step_and_fast_products():
    from carvelab.search_space.loading import load_trial_config
    from carvelab.trials.trial import run_trial

    config = load_trial_config("trials/configs/tiny_mqar.yaml", ["train.steps=8", "train.device=cuda",
                                                                 "train.eval_every=4"])
    result = run_trial(config)
    assert result.status == "completed" and result.steps == 8
    assert result.step_mode == "cuda_graph" and result.precision == "fast"
    assert [s for s, _ in result.history] == [4, 8]
