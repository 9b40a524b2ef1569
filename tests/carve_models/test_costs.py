"""Costs: param_count against the built model; FLOPs against a FLOP counter over a real
forward (the linear maps and convolutions) and by property (the recurrence, attention);
state bytes against the states a real forward carries."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from carvelab.carve_models import PRESETS, HybridLM, flops_per_token, param_count, preset_config, state_bytes
from carvelab.carve_models import mixer as mixer_module
from carvelab.carve_models.attention import SlidingWindowAttention
from carvelab.carve_models.conv import ShortConv
from carvelab.carve_models.costs import flops_breakdown, mean_attended
from carvelab.carve_models.gates import ContentParams

TINY = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=4, chunk_size=16, window=8, backend="reference")

POINTS = [(name, dict(hybrid_ratio=r)) for name in PRESETS for r in ("1:0", "3:1", "1:1", "0:1")] + [
    ("gdn2", dict(erase_axis="value")),
    ("gdn2", dict(erase_axis="value", expand_v=2.0, content_gate=True, content_rank=3)),
    ("gdn2", dict(write_gate="scalar")),
    ("gdn2", dict(covariance="propagate", hybrid_ratio="1:1")),
    ("bayes", dict(content_gate=True)),
    ("gdn", dict(content_gate=True, content_target="decay")),
    ("kda", dict(content_gate=True, content_target="decay", tie_embeddings=False)),
    ("carve", dict(expand_k=0.5, expand_v=2.0, mlp_hidden=40, conv_size=3, n_layers=3, hybrid_ratio="2:1")),
    ("deltanet", dict(erase_gate="channel", erase_axis="value", write_gate="per_value", tie_gates=False)),
    ("carve", dict(init="matched")),   # the meta model is not initialised (no generator on meta)
]


def _point_id(point):
    name, kw = point
    return name + "".join(f"-{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("name,kw", POINTS, ids=[_point_id(p) for p in POINTS])
def test_param_count_matches_model(name, kw):
    cfg = preset_config(name, **{**TINY, **kw})
    assert param_count(cfg) == sum(p.numel() for p in HybridLM(cfg).parameters())


def test_mean_attended():
    assert mean_attended(5, 3) == pytest.approx((1 + 2 + 3 + 3 + 3) / 5)
    assert mean_attended(3, 8) == pytest.approx(2.0)


COUNTED = [p for p in POINTS if p[1].get("hybrid_ratio") in (None, "1:0", "1:1")][::2]


@pytest.mark.parametrize("name,kw", COUNTED, ids=[_point_id(p) for p in COUNTED])
def test_linear_and_conv_flops_match_a_flop_counter_over_a_real_forward(name, kw):
    """torch's FLOP counter sees the linear maps as mm / addmm and the short convs as
    convolutions; the torch chunked recurrence runs on bmm and is not part of this count."""
    cfg = preset_config(name, **{**TINY, **kw, "backend": "torch"})
    B, T = 2, 24
    with FlopCounterMode(display=False) as counter:
        HybridLM(cfg)(torch.randint(0, cfg.vocab_size, (B, T)))
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    parts = flops_breakdown(cfg, T)
    assert counted.get("aten.mm", 0) + counted.get("aten.addmm", 0) == parts["linear"] * B * T
    assert counted.get("aten.convolution", 0) == parts["conv"] * B * T


def test_flops_of_the_recurrence_by_property():
    gdn2 = preset_config("gdn2", **TINY)
    recurrence = flops_breakdown(gdn2, 64)["recurrence"]
    assert recurrence > 0 and flops_breakdown(gdn2, 4096)["recurrence"] == recurrence  # per token, any length
    # a longer chunk does more intra-chunk work per token
    assert flops_breakdown(preset_config("gdn2", **{**TINY, "chunk_size": 32}), 64)["recurrence"] > recurrence
    # propagate's P work grows with dk²: four times as much when dk doubles
    def p_work(d_model):
        kw = {**TINY, "d_model": d_model}
        return (flops_breakdown(preset_config("bayes", **kw), 64)["recurrence"]
                - flops_breakdown(preset_config("kda", **kw), 64)["recurrence"])
    small, large = p_work(32), p_work(64)  # dk 16 -> 32 at the same head count
    assert small > 0 and large == pytest.approx(4 * small)
    assert flops_breakdown(preset_config("gdn", **{**TINY, "hybrid_ratio": "1:0"}), 64)["attention"] == 0


STATEFUL = [("gdn2", {}), ("bayes", {}), ("carve", {}), ("gdn", dict(hybrid_ratio="1:1")),
            ("gdn2", dict(erase_axis="value", content_gate=True, covariance="propagate"))]


@pytest.mark.parametrize("name,kw", STATEFUL, ids=[_point_id(p) for p in STATEFUL])
def test_state_bytes_count_the_states_a_real_forward_carries(name, kw, monkeypatch):
    cfg = preset_config(name, **{**TINY, **kw})
    outs, real = [], mixer_module.gated_delta

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        outs.append(out)
        return out

    monkeypatch.setattr(mixer_module, "gated_delta", spy)
    B = 3
    model = HybridLM(cfg)
    model(torch.randint(0, cfg.vocab_size, (B, 20)))
    # S (and P) as the recurrence returns them; the convs keep their last width-1 inputs; the
    # content gate the previous chunk's mean and this chunk's running sum; attention its window's K, V
    carried = sum(o.state.numel() + (0 if o.cov is None else o.cov.numel()) for o in outs)
    per_sequence = sum(m.weight.shape[0] * (m.width - 1) for m in model.modules() if isinstance(m, ShortConv))
    per_sequence += sum(2 * m.V.shape[0] * m.V.shape[-1] for m in model.modules() if isinstance(m, ContentParams))
    per_sequence += sum(2 * cfg.window * cfg.d_model for m in model.modules() if isinstance(m, SlidingWindowAttention))
    assert len(outs) == cfg.layer_kinds().count("recurrent")
    assert state_bytes(cfg, batch=B) == 4 * (carried + B * per_sequence)


def test_attention_flops_follow_the_attended_keys():
    attn = preset_config("gdn", **{**TINY, "hybrid_ratio": "0:1"})
    per_key = 4 * attn.d_model * attn.n_layers
    assert flops_breakdown(attn, 1)["attention"] == per_key
    assert flops_breakdown(attn, 100)["attention"] == pytest.approx(per_key * mean_attended(100, attn.window))


@pytest.mark.parametrize("fn,arg,value", [(flops_per_token, "seq_len", 0), (state_bytes, "batch", -2)],
                         ids=["seq_len-0", "batch-negative"])
def test_bad_arguments(fn, arg, value):
    with pytest.raises(ValueError, match=rf"{arg}={value} must be a positive integer"):
        fn(preset_config("kda"), **{arg: value})
