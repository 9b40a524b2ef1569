"""Gate forms: the registry agrees with the kernels' vocabulary, and a new form added
through ``register_gate_form`` alone is accepted by the config, built, trained and costed."""
import pytest
import torch
from torch import nn

from carvelab.carve_models import HybridLM, ModelConfig, param_count, preset_config
from carvelab.carve_models import gates
from carvelab.carve_models.costs import flops_breakdown
from carvelab.carve_models.mixer import GatedDeltaMixer
from carvelab.kernels import options

TINY = dict(vocab_size=64, d_model=24, n_heads=2, n_layers=2, chunk_size=16, backend="torch")
B, T = 2, 37


class PairedErase(nn.Linear):
    """A toy erase-gate form: one logit per pair of channels of the erase axis."""

    @classmethod
    def width(cls, cfg: ModelConfig) -> int:
        return cfg.head_dim_k if cfg.erase_axis == "key" else cfg.head_dim_v

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.d_model, cfg.n_heads * self.width(cfg) // 2, bias=False)
        self.n_heads = cfg.n_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B_, T_, _ = x.shape
        return super().forward(x).float().view(B_, T_, self.n_heads, -1).repeat_interleave(2, dim=-1)


@pytest.fixture
def paired(monkeypatch):
    """Register ``erase_gate: paired`` for one test (both registries restored after it)."""
    monkeypatch.setattr(options, "_GATE_FORMS", {k: list(v) for k, v in options._GATE_FORMS.items()})
    monkeypatch.setattr(gates, "GATE_FORMS", {k: dict(v) for k, v in gates.GATE_FORMS.items()})
    gates.register_gate_form("erase_gate", "paired", PairedErase)
    return "paired"


def test_every_declared_form_has_a_layer_and_every_layer_a_name():
    for kind in options.GATE_KINDS:
        assert set(options.gate_forms(kind)) == set(gates.GATE_FORMS[kind]), kind


def test_an_unregistered_form_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"model.erase_gate='paired' is not allowed; choose one of \['channel', 'head'\]"):
        ModelConfig(erase_gate="paired")


def test_a_registered_form_is_accepted_built_and_trained(paired):
    cfg = preset_config("carve", erase_gate=paired, **TINY)  # content gate on the new erase gate
    assert "paired" in options.gate_forms("erase_gate")
    mixer = GatedDeltaMixer(cfg)
    x = torch.randn(B, T, cfg.d_model, generator=torch.Generator().manual_seed(0))
    b, _, _ = mixer.gates(x)
    assert isinstance(mixer.gates.b_proj, PairedErase) and b.shape == (B, T, cfg.n_heads, cfg.head_dim_k)
    assert torch.equal(b[..., 0::2], b[..., 1::2])
    assert mixer.content.U.shape == (cfg.n_heads, cfg.head_dim_k, cfg.content_rank)
    model = HybridLM(cfg)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))
    model(ids).logsumexp(-1).mean().backward()
    grad = model.layers[0].mixer.gates.b_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_registered_form_is_costed_by_what_it_builds(paired):
    cfg = preset_config("gdn2", erase_gate=paired, **TINY)
    channel = preset_config("gdn2", **TINY)
    assert param_count(cfg) == sum(p.numel() for p in HybridLM(cfg).parameters())
    halved = cfg.n_layers * cfg.d_model * cfg.n_heads * cfg.head_dim_k // 2  # per layer: half the erase projection
    assert param_count(channel) - param_count(cfg) == halved
    assert flops_breakdown(channel, 64)["linear"] - flops_breakdown(cfg, 64)["linear"] == 2 * halved
    assert flops_breakdown(channel, 64)["recurrence"] == flops_breakdown(cfg, 64)["recurrence"]


def test_registration_errors_name_the_problem(paired):
    with pytest.raises(ValueError, match="already registered"):
        gates.register_gate_form("erase_gate", "channel", PairedErase)
    gates.register_gate_form("erase_gate", "paired", PairedErase)  # the same class again: nothing changes
    assert options.gate_forms("erase_gate").count("paired") == 1
    with pytest.raises(ValueError, match=r"gate kind='noise' is not allowed"):
        gates.register_gate_form("noise", "paired", PairedErase)
    with pytest.raises(TypeError, match="width"):
        gates.register_gate_form("write_gate", "plain", nn.Linear)
    with pytest.raises(ValueError, match="identifier"):
        gates.register_gate_form("write_gate", "two words", PairedErase)


def test_ray_workers_import_the_module_that_registered_a_form(paired):
    from carvelab.trials.sweep import scheduler

    assert __name__ in scheduler.extension_modules()
