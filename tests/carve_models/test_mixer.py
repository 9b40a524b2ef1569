"""GatedDeltaMixer: what it hands the kernel (gates, shapes, pre-activations) and that
the bayes mixer is the exact Kalman update with beta = 1/(1+r)."""
import os

import pytest
import torch
from torch.nn import functional as F

import carvelab.carve_models.mixer as mixer_mod
from carvelab.carve_models import GatedDeltaMixer, ModelConfig, preset_config
from carvelab.carve_models.gates import NOISE_FLOOR, WRITE_GATE_BIAS_INIT
from carvelab.kernels.dispatch import gated_delta

BACKEND = os.environ.get("CARVELAB_TEST_BACKEND", "auto")
TINY = dict(vocab_size=64, d_model=24, n_heads=2, chunk_size=16, backend=BACKEND)
B, T = 2, 41


@pytest.fixture
def recorded(monkeypatch):
    """Record every call the mixer makes to ``gated_delta`` (and still run it)."""
    calls = []

    def spy(*args, **kwargs):
        out = gated_delta(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    monkeypatch.setattr(mixer_mod, "gated_delta", spy)
    return calls


def _x(d, seed=3):
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed))


def _kalman(q, k, v, g, r, scale):
    """The Bayesian Layer written out by hand, per token and head (DESIGN §2):
    P̄ = D P D + (I - D²); S = D S + P̄k (v - (D S)ᵀk)ᵀ / (kᵀP̄k + r); P = P̄ - P̄kkᵀP̄ / (kᵀP̄k + r)."""
    Bq, Tq, H, dk = q.shape
    dv = v.shape[-1]
    o = torch.zeros(Bq, Tq, H, dv, dtype=torch.float64)
    for bi in range(Bq):
        for h in range(H):
            S, P = torch.zeros(dk, dv, dtype=torch.float64), torch.eye(dk, dtype=torch.float64)
            for t in range(Tq):
                kt, d = k[bi, t, h].double(), torch.exp(g[bi, t, h].double())
                P_bar = d[:, None] * P * d[None, :] + torch.diag(1 - d * d)
                S_bar = d[:, None] * S
                Pk = P_bar @ kt
                c = kt @ Pk + r[bi, t, h].double()
                S = S_bar + torch.outer(Pk, v[bi, t, h].double() - S_bar.T @ kt) / c
                P = P_bar - torch.outer(Pk, Pk) / c
                o[bi, t, h] = S.T @ (scale * q[bi, t, h].double())
    return o


def test_bayes_mixer_is_the_kalman_update(recorded):
    cfg = preset_config("bayes", **TINY)
    mixer = GatedDeltaMixer(cfg)
    x = _x(cfg.d_model)
    with torch.no_grad():
        mixer(x)
    (q, k, v, g, b, w, r, options), kwargs, out = recorded[0]
    assert options == cfg.recurrence and options.covariance == "propagate" and kwargs["content"] is None
    expected_r = F.softplus(mixer.gates.r_proj(x)) + NOISE_FLOOR
    torch.testing.assert_close(r, expected_r, rtol=0, atol=0)
    assert (r > 0).all()
    torch.testing.assert_close(b, 1 / (1 + r), rtol=0, atol=0)
    assert torch.equal(w, b)
    kalman = _kalman(q, k, v, g, r, cfg.head_dim_k ** -0.5)
    torch.testing.assert_close(out.o.double(), kalman, rtol=1e-4, atol=1e-7)


def test_gdn2_gates_shapes_and_write_gate_init(recorded):
    cfg = preset_config("gdn2", **TINY)
    mixer = GatedDeltaMixer(cfg)
    x = _x(cfg.d_model)
    with torch.no_grad():
        mixer(x)
    (q, k, v, g, b, w, r, options), kwargs, _ = recorded[0]
    H, dk, dv = cfg.n_heads, cfg.head_dim_k, cfg.head_dim_v
    assert g.shape == (B, T, H, dk) and (g <= 0).all()
    assert b.shape == (B, T, H, dk) and ((b > 0) & (b < 1)).all()
    # zero weight, constant bias: the write gate is the same constant for every token
    assert torch.equal(w, torch.full((B, T, H, dv), torch.sigmoid(torch.tensor(WRITE_GATE_BIAS_INIT)).item()))
    assert r is None and options.erase_axis == "key" and options.chunk_size == 16
    raw = mixer.q_conv(mixer.q_proj(x)).view(B, T, H, dk)
    torch.testing.assert_close(q, raw / torch.sqrt(raw.pow(2).sum(-1, keepdim=True) + 1e-6))
    assert (q.norm(dim=-1) <= 1).all()


def test_decay_is_minus_exp_a_times_softplus(recorded):
    cfg = preset_config("kda", **TINY)
    mixer = GatedDeltaMixer(cfg)
    x = _x(cfg.d_model)
    with torch.no_grad():
        mixer(x)
    g = recorded[0][0][3]
    dec = mixer.decay
    f = (x @ dec.f_proj.weight.T).view(B, T, cfg.n_heads, -1) + dec.dt_bias.view(cfg.n_heads, -1)
    expected = -torch.exp(dec.A_log)[:, None] * F.softplus(f)
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-7)


def test_deltanet_has_no_decay(recorded):
    mixer = GatedDeltaMixer(preset_config("deltanet", **TINY))
    with torch.no_grad():
        mixer(_x(TINY["d_model"]))
    g, b, w = recorded[0][0][3:6]
    assert not list(mixer.decay.parameters()) and torch.equal(g, torch.zeros(B, T, TINY["n_heads"]))
    assert b.shape == (B, T, TINY["n_heads"]) and torch.equal(w, b)


# (preset, overrides, target, n = width of the corrected gate); d_model 32, 2 heads: dk = 16
CONTENT = [
    ("carve", {}, "erase", 16),                                   # key-axis channel erase: dk
    ("carve", {"erase_axis": "value", "expand_v": 2.0}, "erase", 32),  # value-axis channel erase: dv
    ("kda", {"content_gate": True, "content_target": "decay"}, "decay", 16),  # channel decay: dk
    ("gdn", {"content_gate": True, "content_target": "decay"}, "decay", 1),   # scalar decay
    ("gdn", {"content_gate": True}, "erase", 1),                  # one beta per head
    ("bayes", {"content_gate": True}, "erase", 1),                # beta = 1/(1+r)
]


@pytest.mark.parametrize("name,extra,target,n", CONTENT,
                         ids=["carve", "carve-value", "kda-decay", "gdn-decay", "gdn-erase", "bayes-erase"])
def test_content_gate_passes_pre_activation(recorded, name, extra, target, n):
    cfg = preset_config(name, **{**TINY, "d_model": 32, **extra})
    mixer = GatedDeltaMixer(cfg)
    x = _x(cfg.d_model)
    y = mixer(x)
    (q, k, v, g, b, w, r, _options), kwargs, _out = recorded[0]
    content = kwargs["content"]
    assert content.target == target and torch.equal(content.U, torch.zeros_like(content.U))
    if target == "decay":
        assert content.A_log is mixer.decay.A_log
        pre = x @ mixer.decay.f_proj.weight.T + mixer.decay.dt_bias  # f + dt_bias, not the log-decay
        torch.testing.assert_close(g, pre.view(g.shape))
    elif mixer.gates.b_proj is None:  # tied propagate: the logit of beta = 1/(1+r) is -log r
        torch.testing.assert_close(torch.sigmoid(b), 1 / (1 + r))
    else:
        torch.testing.assert_close(b, (x @ mixer.gates.b_proj.weight.T).view(b.shape))
        assert ((b < 0) | (b > 1)).any()  # logits, not a gate in (0, 1)
        if cfg.tie_gates:  # the tied write gate is beta before the chunk's correction
            assert torch.equal(w, torch.sigmoid(b))
    assert content.U.shape == (cfg.n_heads, n, cfg.content_rank)
    assert content.V.shape == (cfg.n_heads, cfg.content_rank, cfg.head_dim_v)
    y.pow(2).mean().backward()
    assert mixer.content.U.grad.abs().sum() > 0


def test_content_gate_is_inert_at_init():
    """With U = 0 the mixer with the content gate equals the one without (same weights)."""
    base = preset_config("gdn2", **{**TINY, "d_model": 32})
    plain = GatedDeltaMixer(base)
    gated = GatedDeltaMixer(ModelConfig(**{**base.__dict__, "content_gate": True}))
    gated.load_state_dict(plain.state_dict(), strict=False)
    x = _x(32)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), plain(x), rtol=1e-6, atol=1e-7)
        gated.content.U.fill_(100.0)  # a large map: at init o, hence m, is small
        ref = plain(x)
        assert (gated(x) - ref).norm() > 1e-3 * ref.norm()


SIGNED = [("kda", {}), ("gdn2", {}), ("gdn2", {"erase_axis": "value"}), ("carve", {})]


@pytest.mark.parametrize("name,extra", SIGNED, ids=["kda", "gdn2", "gdn2-value", "carve"])
def test_signed_eigen_range_doubles_the_erase_gate_only(recorded, name, extra):
    """eigen_range '[-1,1]': b = 2 sigmoid(logits) (in the kernel for a content gate); the
    untied write gate is unchanged and a tied one is beta, so doubled too (fla's
    allow_neg_eigval). Same weights, so everything else the kernel gets is identical."""
    unit = preset_config(name, **{**TINY, "d_model": 32, **extra})
    signed = ModelConfig(**{**unit.__dict__, "eigen_range": "[-1,1]"})
    a, b_mixer = GatedDeltaMixer(unit), GatedDeltaMixer(signed)
    b_mixer.load_state_dict(a.state_dict())
    x = _x(32)
    with torch.no_grad():
        a(x), b_mixer(x)
    (args1, kw1, _), (args2, kw2, _) = recorded
    b1, w1, b2, w2 = args1[4], args1[5], args2[4], args2[5]
    for i in (0, 1, 2, 3):                                   # q, k, v, g
        assert torch.equal(args1[i], args2[i])
    if unit.content_gate:
        assert torch.equal(b1, b2)                           # logits either way
        assert kw1["content"].erase_scale == 1.0 and kw2["content"].erase_scale == 2.0
    else:
        assert kw2["content"] is None
        torch.testing.assert_close(b2, 2.0 * b1, rtol=0, atol=0)
        assert (b2 > 1.0).any() and (b2 < 2.0).all() and (b2 > 0).all()
    if unit.tie_gates:
        assert torch.equal(w2, b2)
    else:
        assert torch.equal(w1, w2)


def test_signed_carve_is_bit_identical_to_signed_gdn2_at_matched_init():
    """The CARVE-vs-GDN-2 control holds under eigen_range '[-1,1]' as well."""
    common = {**TINY, "d_model": 32, "eigen_range": "[-1,1]", "init": "matched"}
    plain = GatedDeltaMixer(preset_config("gdn2", **common))
    gated = GatedDeltaMixer(preset_config("carve", **common))
    plain.load_state_dict(gated.state_dict(), strict=False)
    x = _x(32)
    with torch.no_grad():
        assert torch.equal(gated(x), plain(x))
