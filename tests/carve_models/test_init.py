"""init: matched / default, and the special inits that hold in both modes."""
import math

import pytest
import torch
from torch.nn import functional as F

from carvelab.carve_models import HybridLM, preset_config
from carvelab.carve_models.gates import WRITE_GATE_BIAS_INIT
from carvelab.carve_models.init import INIT_STD, matched_seed

TINY = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=3, hybrid_ratio="2:1", chunk_size=16, backend="reference")


def _params(name, **kw):
    return dict(HybridLM(preset_config(name, **{**TINY, **kw})).named_parameters())


@pytest.mark.parametrize("a,b", [("gdn2", "carve"), ("kda", "gdn2"), ("kda", "bayes"), ("gdn", "deltanet")],
                         ids=["gdn2-carve", "kda-gdn2", "kda-bayes", "gdn-deltanet"])
def test_matched_shares_every_common_parameter(a, b):
    pa, pb = _params(a, init="matched", seed=5), _params(b, init="matched", seed=5)
    common = [n for n in pa if n in pb and pa[n].shape == pb[n].shape]
    assert len(common) > 10
    for name in common:
        assert torch.equal(pa[name], pb[name]), name


def test_matched_value_depends_only_on_seed_and_name():
    p = _params("carve", init="matched", seed=11)
    gen = torch.Generator().manual_seed(matched_seed(11, "embed.weight"))
    expected = torch.empty_like(p["embed.weight"]).normal_(0.0, INIT_STD, generator=gen)
    assert torch.equal(p["embed.weight"], expected)
    assert not torch.equal(p["layers.0.mixer.q_proj.weight"], p["layers.1.mixer.q_proj.weight"])


def test_default_is_seeded_and_differs_when_parameters_are_added():
    a, b = _params("gdn2", seed=3), _params("gdn2", seed=3)
    assert all(torch.equal(a[n], b[n]) for n in a)
    c = _params("gdn2", seed=4)
    assert not torch.equal(a["embed.weight"], c["embed.weight"])
    carve = _params("carve", seed=3)  # extra content parameters shift the global stream
    assert not torch.equal(a["layers.0.mixer.o_proj.weight"], carve["layers.0.mixer.o_proj.weight"])


@pytest.mark.parametrize("init", ["default", "matched"])
@pytest.mark.parametrize("name", ["carve", "gdn", "bayes"])
def test_special_inits_hold(name, init):
    p = _params(name, init=init, seed=2)
    A = torch.exp(p["layers.0.mixer.decay.A_log"])
    assert ((A >= 1) & (A <= 16)).all() and A.std() > 0
    dt = F.softplus(p["layers.0.mixer.decay.dt_bias"])
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 1e-1 * (1 + 1e-5))).all()
    for norm in ("norm.weight", "layers.0.mixer_norm.weight", "layers.2.mlp_norm.weight"):
        assert torch.equal(p[norm], torch.ones(TINY["d_model"])), norm
    assert torch.equal(p["layers.0.mixer.o_norm.weight"], torch.ones_like(p["layers.0.mixer.o_norm.weight"]))
    if name == "carve":
        assert torch.equal(p["layers.0.mixer.gates.w_proj.weight"], torch.zeros_like(p["layers.0.mixer.gates.w_proj.weight"]))
        assert (p["layers.0.mixer.gates.w_proj.bias"] == WRITE_GATE_BIAS_INIT).all()
        U, V = p["layers.0.mixer.content.U"], p["layers.0.mixer.content.V"]
        assert torch.equal(U, torch.zeros_like(U))
        assert 0.3 < V.std().item() * math.sqrt(V.shape[-1]) < 3  # ~N(0, 1/dv)
    proj = p["layers.0.mixer.q_proj.weight"]
    assert abs(proj.std().item() - INIT_STD) < 0.3 * INIT_STD


def test_tied_embedding_is_one_parameter():
    model = HybridLM(preset_config("kda", **TINY))
    assert model.lm_head is None
    assert sum(1 for n, _ in model.named_parameters() if "embed" in n) == 1


def test_rejects_unknown_init():
    with pytest.raises(ValueError, match=r"model.init='orthogonal' is not allowed; choose one of \['default', 'matched'\]"):
        preset_config("kda", init="orthogonal")
