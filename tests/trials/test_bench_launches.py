"""The launch count of a training step (trials/bench_launches.py): fusing a piece removes the
torch ops it replaces and adds its own Triton launches, and the counts are what they claim.

    TRITON_INTERPRET=1 python -m pytest tests/trials/test_bench_launches.py -q
"""
from __future__ import annotations

import pytest
import torch

from carvelab.trials import bench_launches
from carvelab.trials.bench_step import Size

TINY = Size(d_model=32, n_layers=1, seq_len=16, batch=1, head_dim=16)
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="counts on the CPU, under the interpreter")


@pytest.fixture(scope="module")
def counts():
    return {v: bench_launches.count_step("kda", TINY, v, vocab=64, tokens=16)
            for v in ("graph", "graph_fused", "graph_gates", "graph_all")}


def test_the_fused_pieces_trade_torch_ops_for_fewer_triton_launches(counts):
    graph, fused, gates, every = (counts[v] for v in ("graph", "graph_fused", "graph_gates", "graph_all"))
    for c in counts.values():
        assert c["total"] == c["torch_ops"] + c["triton_launches"] == sum(c["by_op"].values()) + sum(c["by_kernel"].values())
    assert fused["triton_launches"] > graph["triton_launches"] and fused["torch_ops"] < graph["torch_ops"]
    assert every["total"] < gates["total"] < fused["total"] < graph["total"]
    # what the torch path runs for a norm, and the fused path does not
    assert graph["by_op"].get("rsqrt", 0) > 0 and fused["by_op"].get("rsqrt", 0) == 0
    assert {"_norm_fwd_kernel", "_norm_bwd_kernel", "_conv_fwd_kernel"} <= set(fused["by_kernel"])
    assert "_ce_fwd_kernel" in every["by_kernel"] and "_ce_fwd_kernel" not in gates["by_kernel"]


def test_views_and_interpreted_launches_are_not_counted(counts):
    for c in counts.values():
        assert not set(c["by_op"]) & bench_launches.NO_KERNEL
        assert c["by_op"].get("mm", 0) > 0  # the projections' products are


def test_bad_names_are_refused_with_the_choices():
    with pytest.raises(SystemExit, match=r"--variants: \['graph_ce'\] not allowed"):
        bench_launches.parse_args(["--variants", "graph_ce"])
