"""The reference recurrence against the textbook formulas it must reduce to (DESIGN §2).

Each explicit formula is written out here with dense matrices, token by token, so the
test does not share code with ``kernels/reference.py``.
"""
import pytest
import torch
import torch.nn.functional as F

from carvelab.kernels._args import ContentGate
from carvelab.kernels.reference import gated_delta_reference

TOL = 1e-5
B, T, H, DK, DV = 2, 23, 3, 5, 7


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def inputs(decay_shape=(B, T, H, DK)):
    q, k, v = unit(B, T, H, DK), unit(B, T, H, DK), torch.randn(B, T, H, DV)
    g = -F.softplus(torch.randn(*decay_shape) - 1.0)
    S0 = torch.randn(B, H, DK, DV)
    return q, k, v, g, S0


def outer(a, b):
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def matvec_t(S, x):
    """Sᵀ x for S [..., dk, dv], x [..., dk]."""
    return (S.transpose(-1, -2) @ x.unsqueeze(-1)).squeeze(-1)


def run_explicit(q, S0, step):
    """o_t = S_tᵀ (dk^-1/2 q_t) with S_t = step(t, S_{t-1})."""
    S, outs = S0, []
    for t in range(q.shape[1]):
        S = step(t, S)
        outs.append(matvec_t(S, q[:, t] * DK ** -0.5))
    return torch.stack(outs, 1), S


def assert_close(got, want, what):
    err = rel_err(got, want)
    assert err <= TOL, f"{what}: relative error {err:.2e} > {TOL:.0e}"


def test_gdn2_formula():
    """reset, key axis, per-value write: S_t = (I - k (b⊙k)ᵀ) D S + k (w⊙v)ᵀ."""
    q, k, v, g, S0 = inputs()
    b, w = torch.rand(B, T, H, DK), torch.rand(B, T, H, DV)
    eye = torch.eye(DK)

    def step(t, S):
        D = torch.diag_embed(torch.exp(g[:, t]))
        return (eye - outer(k[:, t], b[:, t] * k[:, t])) @ D @ S + outer(k[:, t], w[:, t] * v[:, t])

    o, S = run_explicit(q, S0, step)
    ref = gated_delta_reference(q, k, v, g, b, w, initial_state=S0)
    assert_close(ref.o, o, "o")
    assert_close(ref.state, S, "state")


@pytest.mark.parametrize("decay", ["channel", "scalar"], ids=["kda", "gated_deltanet"])
def test_kda_and_gated_deltanet(decay):
    """b = β·1, w = β: S_t = (I - β k kᵀ) D S + β k vᵀ; a scalar decay gives Gated DeltaNet."""
    q, k, v, g, S0 = inputs((B, T, H, DK) if decay == "channel" else (B, T, H))
    beta = torch.rand(B, T, H)
    eye = torch.eye(DK)

    def step(t, S):
        bt = beta[:, t, :, None, None]
        if decay == "channel":
            DS = torch.diag_embed(torch.exp(g[:, t])) @ S
        else:
            DS = torch.exp(g[:, t])[..., None, None] * S          # alpha_t S
        return (eye - bt * outer(k[:, t], k[:, t])) @ DS + bt * outer(k[:, t], v[:, t])

    o, S = run_explicit(q, S0, step)
    ref = gated_delta_reference(q, k, v, g, beta, beta, initial_state=S0)
    assert_close(ref.o, o, "o")
    assert_close(ref.state, S, "state")


def test_kalman_update():
    """propagate, unit k, b = β·1, w = β = 1/(1+r): the exact Kalman filter update."""
    q, k, v, g, S0 = inputs()
    r = F.softplus(torch.randn(B, T, H)) + 0.05
    beta = 1 / (1 + r)
    eye = torch.eye(DK)
    P = eye.expand(B, H, DK, DK)

    def step(t, S):
        nonlocal P
        D = torch.diag_embed(torch.exp(g[:, t]))
        P_bar = D @ P @ D + (eye - D @ D)
        S_bar = D @ S
        kt = k[:, t].unsqueeze(-1)                                  # [B, H, dk, 1]
        c = (kt.transpose(-1, -2) @ P_bar @ kt) + r[:, t, :, None, None]
        gain = P_bar @ kt / c
        innovation = v[:, t].unsqueeze(-2) - kt.transpose(-1, -2) @ S_bar     # (v - S̄ᵀk)ᵀ
        P = P_bar - P_bar @ kt @ kt.transpose(-1, -2) @ P_bar / c
        return S_bar + gain @ innovation

    o, S = run_explicit(q, S0, step)
    ref = gated_delta_reference(q, k, v, g, beta, beta, r, covariance="propagate", initial_state=S0)
    assert_close(ref.o, o, "o")
    assert_close(ref.state, S, "state")
    assert_close(ref.cov, P, "cov")


def test_propagate_with_covariance_held_at_identity_is_the_delta_rule():
    """With P̄ ≡ I (P reset to I before every token) and unit k, u = k: the reset rule."""
    q, k, v, g, S0 = inputs()
    b, w = torch.rand(B, T, H, DK), torch.rand(B, T, H, DV)
    r = F.softplus(torch.randn(B, T, H)) + 0.05
    eye = torch.eye(DK).expand(B, H, DK, DK)
    S, outs = S0, []
    for t in range(T):
        sl = slice(t, t + 1)
        out = gated_delta_reference(
            q[:, sl], k[:, sl], v[:, sl], g[:, sl], b[:, sl], w[:, sl], r[:, sl],
            covariance="propagate", initial_state=S, initial_cov=eye,
        )
        S = out.state
        outs.append(out.o)
    held = torch.cat(outs, 1)
    reset = gated_delta_reference(q, k, v, g, b, w, initial_state=S0)
    assert_close(held, reset.o, "o")
    assert_close(S, reset.state, "state")
    # and the covariance really matters once it is carried along
    carried = gated_delta_reference(q, k, v, g, b, w, r, covariance="propagate", initial_state=S0)
    assert rel_err(carried.o, reset.o) > 100 * TOL


def test_value_axis_with_constant_mask_is_key_axis():
    q, k, v, g, S0 = inputs()
    beta, w = torch.rand(B, T, H), torch.rand(B, T, H, DV)
    on_value = gated_delta_reference(
        q, k, v, g, beta[..., None].expand(B, T, H, DV), w, erase_axis="value", initial_state=S0
    )
    on_key = gated_delta_reference(q, k, v, g, beta[..., None].expand(B, T, H, DK), w, initial_state=S0)
    assert_close(on_value.o, on_key.o, "o")
    assert_close(on_value.state, on_key.state, "state")


def test_content_gate_uses_previous_chunk_mean_output():
    """Chunk c's erase gate is sigmoid(pre + U V m_c) with m_c the mean output of chunk c-1."""
    q, k, v, g, S0 = inputs()
    pre, w = torch.randn(B, T, H, DK), torch.rand(B, T, H, DV)
    U, V = torch.randn(H, DK, 2), torch.randn(H, 2, DV)
    C = 8
    gated = gated_delta_reference(q, k, v, g, pre, w, content=ContentGate(U, V), chunk_size=C, initial_state=S0)
    b = torch.sigmoid(pre).clone()
    for c0 in range(C, T, C):
        m = gated.o[:, c0 - C:c0].mean(1)                                  # [B, H, dv]
        delta = torch.einsum("hnr,hrv,bhv->bhn", U, V, m)
        b[:, c0:c0 + C] = torch.sigmoid(pre[:, c0:c0 + C] + delta.unsqueeze(1))
    plain = gated_delta_reference(q, k, v, g, b, w, initial_state=S0)
    assert_close(gated.o, plain.o, "o")


def test_signed_eigenvalues_reflect_the_state():
    """b = 2 with unit k, no decay and no write: S_t = (I - 2 k kᵀ) S_{t-1}, a Householder
    reflection (eigenvalue -1 along k), so two tokens with the same key restore S."""
    q, k, v, _, S0 = inputs()
    g = torch.zeros(B, T, H, DK)
    b, w = torch.full((B, T, H, DK), 2.0), torch.zeros(B, T, H, DV)
    eye = torch.eye(DK)
    o, S = run_explicit(q, S0, lambda t, S: (eye - 2.0 * outer(k[:, t], k[:, t])) @ S)
    ref = gated_delta_reference(q, k, v, g, b, w, initial_state=S0)
    assert_close(ref.o, o, "o")
    assert_close(ref.state, S, "state")
    k_same = k[:, :1].expand(B, 2, H, DK)
    twice = gated_delta_reference(q[:, :2], k_same, v[:, :2], g[:, :2], b[:, :2], w[:, :2], initial_state=S0)
    assert_close(twice.state, S0, "S after two reflections")
    along = matvec_t(S0, k[:, 0])                                       # S0ᵀ k flips sign after one
    once = gated_delta_reference(q[:, :1], k[:, :1], v[:, :1], g[:, :1], b[:, :1], w[:, :1], initial_state=S0)
    assert_close(matvec_t(once.state, k[:, 0]), -along, "S1ᵀ k = -S0ᵀ k")


def test_content_gate_erase_scale_scales_after_the_sigmoid():
    """erase_scale 2 (eigen_range [-1,1]): chunk c's erase gate is 2 sigmoid(pre + U V m_c)."""
    q, k, v, g, S0 = inputs()
    pre, w = torch.randn(B, T, H, DK), torch.rand(B, T, H, DV)
    U, V = torch.randn(H, DK, 2), torch.randn(H, 2, DV)
    C = 8
    content = ContentGate(U, V, erase_scale=2.0)
    gated = gated_delta_reference(q, k, v, g, pre, w, content=content, chunk_size=C, initial_state=S0)
    b = 2.0 * torch.sigmoid(pre)
    for c0 in range(C, T, C):
        m = gated.o[:, c0 - C:c0].mean(1)
        delta = torch.einsum("hnr,hrv,bhv->bhn", U, V, m)
        b[:, c0:c0 + C] = 2.0 * torch.sigmoid(pre[:, c0:c0 + C] + delta.unsqueeze(1))
    assert (b > 1.0).any()
    plain = gated_delta_reference(q, k, v, g, b, w, initial_state=S0)
    assert_close(gated.o, plain.o, "o")
    assert_close(gated.state, plain.state, "state")


def _valid():
    q, k, v, g, _ = inputs()
    return dict(q=q, k=k, v=v, g=g, b=torch.rand(B, T, H, DK), w=torch.rand(B, T, H, DV))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(erase_axis="values"), "erase_axis='values'"),
        (dict(covariance="kalman"), "covariance='kalman'"),
        (dict(k=torch.randn(B, T, H, DK + 1)), "q and k"),
        (dict(v=torch.randn(B, T + 1, H, DV)), "v must be"),
        (dict(b=torch.rand(B, T, H, DV)), "b has shape"),
        (dict(w=torch.rand(B, T, H, DK)), "w has shape"),
        (dict(covariance="propagate"), "needs r"),
        (dict(r=torch.rand(B, T, H)), "only used with covariance='propagate'"),
        (dict(initial_state=torch.zeros(B, H, DV, DK)), "initial_state"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(content=ContentGate(torch.zeros(H, DK, 2), torch.zeros(H, 2, DV), "gain")), "content.target"),
        (dict(content=ContentGate(torch.zeros(H, DK, 2), torch.zeros(H, 2, DV), "decay")), "content.A_log"),
        (dict(content=ContentGate(torch.zeros(H, DV, 2), torch.zeros(H, 2, DV))), "content gate U"),
        (dict(content=ContentGate(torch.zeros(H, DK, 2), torch.zeros(H, 2, DV), erase_scale=3.0)), "erase_scale=3.0"),
        (dict(content=ContentGate(torch.zeros(H, DK, 2), torch.zeros(H, 2, DV), "decay", torch.zeros(H), 2.0)),
         "erase_scale applies to target='erase'"),
    ],
    ids=[
        "erase_axis", "covariance", "k_shape", "v_shape", "b_width", "w_width", "r_missing",
        "r_unused", "initial_state_shape", "chunk_size", "content_target", "content_A_log",
        "content_U_shape", "content_erase_scale", "content_erase_scale_decay",
    ],
)
def test_argument_errors_name_the_argument(change, match):
    args = {**_valid(), **change}
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("[", r"\[")):
        gated_delta_reference(**args)
