"""HybridLM: matched-init equivalence of gdn2 and carve, causality, the sliding window,
forward/backward of every preset and hybrid ratio.

The recurrent layers run on the default backend (``auto``: the torch chunked path on
CPU); ``CARVELAB_TEST_BACKEND=reference`` runs the same tests on the specification.
"""
import os

import pytest
import torch

from carvelab.carve_models import PRESETS, HybridLM, param_count, preset_config

BACKEND = os.environ.get("CARVELAB_TEST_BACKEND", "auto")
# d_model 32 with 2 heads: every gate width H·n is 32, T = 45 spans three chunks of 16.
TINY = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=2, chunk_size=16, window=8, backend=BACKEND)
T = 45


def _ids(batch=2, seq=T, seed=1):
    return torch.randint(0, TINY["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ratio,d_model", [("1:0", 32), ("1:1", 32), ("1:0", 24)],
                         ids=["recurrent-d32", "hybrid-d32", "recurrent-d24"])
def test_gdn2_and_carve_identical_at_matched_init(ratio, d_model):
    if BACKEND == "reference" and d_model % 32:
        # The reference activates the gate one token at a time; torch's CPU exp differs by
        # an ulp between its vector body and scalar tail, so widths off a multiple of 32 split unlike the layer's.
        pytest.skip("the reference's per-token sigmoid is exact only for per-token gate tensors a multiple of 32 long")
    kw = {**TINY, "d_model": d_model}
    gdn2 = HybridLM(preset_config("gdn2", init="matched", seed=7, hybrid_ratio=ratio, **kw))
    carve = HybridLM(preset_config("carve", init="matched", seed=7, hybrid_ratio=ratio, **kw))
    ids = _ids()
    assert torch.equal(gdn2(ids), carve(ids))


def test_content_gate_u_receives_gradient_at_init():
    model = HybridLM(preset_config("carve", init="matched", **TINY))
    model(_ids()).logsumexp(-1).mean().backward()
    for layer in model.layers:
        U = layer.mixer.content.U
        assert torch.equal(U.detach(), torch.zeros_like(U))
        assert U.grad is not None and U.grad.abs().sum() > 0


def test_matched_init_differs_between_seeds():
    a = HybridLM(preset_config("gdn2", init="matched", seed=0, **TINY))
    b = HybridLM(preset_config("gdn2", init="matched", seed=1, **TINY))
    ids = _ids()
    assert not torch.allclose(a(ids), b(ids))


CASES = [(name, "1:0") for name in PRESETS] + [("gdn2", r) for r in ("3:1", "1:1", "0:1")] + [("bayes", "1:1")]


@pytest.mark.parametrize("name,ratio", CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_forward_backward_finite_and_param_count(name, ratio):
    cfg = preset_config(name, hybrid_ratio=ratio, **{**TINY, "n_layers": 4 if ratio == "3:1" else 2})
    model = HybridLM(cfg)
    logits = model(_ids(seq=37))
    assert logits.shape == (2, 37, TINY["vocab_size"])
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), _ids(seq=37, seed=2).flatten()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,ratio", [("carve", "1:0"), ("bayes", "1:0"), ("gdn2", "0:1"), ("kda", "1:1")],
                         ids=["carve-recurrent", "bayes-recurrent", "attention-only", "kda-hybrid"])
def test_causal(name, ratio):
    model = HybridLM(preset_config(name, hybrid_ratio=ratio, **TINY))
    ids = _ids(batch=1)
    t = 25
    changed = ids.clone()
    changed[0, t] = (ids[0, t] + 1) % TINY["vocab_size"]
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert torch.equal(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t], after[:, t])
    assert not torch.allclose(before[:, t + 1], after[:, t + 1])


@pytest.mark.parametrize("n_layers", [1, 2], ids=["1layer", "2layers"])
def test_sliding_window_limits_reach(n_layers):
    window = 7
    model = HybridLM(preset_config("gdn", **{**TINY, "hybrid_ratio": "0:1", "window": window, "n_layers": n_layers}))
    ids = _ids(batch=1)
    s = 10
    changed = ids.clone()
    changed[0, s] = (ids[0, s] + 1) % TINY["vocab_size"]
    with torch.no_grad():
        diff = (model(ids) - model(changed)).abs().amax(-1)[0]
    reach = n_layers * (window - 1)  # each layer looks window - 1 tokens back
    assert (diff[s:s + reach + 1] > 0).all()
    assert torch.equal(diff[s + reach + 1:], torch.zeros_like(diff[s + reach + 1:]))


def test_kernel_implementation_names_backend():
    rec = HybridLM(preset_config("gdn2", **{**TINY, "backend": "reference"}))
    assert rec.kernel_implementation() == "reference"
    value = HybridLM(preset_config("gdn2", **{**TINY, "backend": "torch", "erase_axis": "value"}))
    assert value.kernel_implementation() == "torch_chunk_value"
    assert HybridLM(preset_config("gdn2", **{**TINY, "backend": "auto"})).kernel_implementation() == "torch_chunk"
    assert HybridLM(preset_config("gdn2", **{**TINY, "hybrid_ratio": "0:1"})).kernel_implementation() is None


def test_untied_head_is_separate():
    model = HybridLM(preset_config("kda", **{**TINY, "tie_embeddings": False}))
    assert model.lm_head.weight.data_ptr() != model.embed.weight.data_ptr()
    assert model(_ids()).shape == (2, T, TINY["vocab_size"])


def test_rejects_bad_input_shape():
    model = HybridLM(preset_config("kda", **TINY))
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\]"):
        model(torch.zeros(4, dtype=torch.long))


class ShiftMixer(torch.nn.Module):
    """A toy layer kind: each position reads the previous one through a linear map."""

    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.proj = torch.nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x):
        return self.proj(torch.nn.functional.pad(x, (0, 0, 1, 0))[:, :-1])


def test_a_layer_kind_added_to_the_registry_builds_into_the_stack(monkeypatch):
    from carvelab.carve_models import mixers

    monkeypatch.setitem(mixers.MIXERS, "shift", f"{__name__}:ShiftMixer")
    cfg = preset_config("gdn2", vocab_size=32, d_model=16, n_heads=2, n_layers=3, chunk_size=16,
                        backend="reference", block=["recurrent", "shift"])
    assert cfg.layer_kinds() == ["recurrent", "shift", "recurrent"]
    model = HybridLM(cfg)
    assert [type(b.mixer).__name__ for b in model.layers] == ["GatedDeltaMixer", "ShiftMixer", "GatedDeltaMixer"]
    ids = torch.randint(0, 32, (2, 24), generator=torch.Generator().manual_seed(0))
    assert model(ids).shape == (*ids.shape, 32)
    assert param_count(cfg) == model.num_parameters()  # the count reads the built stack, new kind included
    # causal: changing the last token leaves every earlier position's output alone
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 32
    assert torch.equal(model(ids)[:, :-1], model(changed)[:, :-1])


@pytest.mark.parametrize("kw, message", [
    (dict(block=["recurrent", "conv"]), r"model.block: 'conv' is not a layer kind; choose from \['recurrent', 'attention'\]"),
    (dict(block=[]), r"model.block=\[\] must be a non-empty list"),
    (dict(block=["attention"], hybrid_ratio="3:1"), r"both describe the stack; set one"),
])
def test_bad_blocks_are_refused_naming_the_key(kw, message):
    with pytest.raises(ValueError, match=message):
        preset_config("gdn2", **kw)


def test_hybrid_ratio_is_shorthand_for_a_block():
    assert preset_config("gdn2", n_layers=4, hybrid_ratio="3:1").layer_kinds() == \
        preset_config("gdn2", n_layers=4, block=["recurrent"] * 3 + ["attention"]).layer_kinds()
