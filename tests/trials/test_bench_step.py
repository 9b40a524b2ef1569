"""The training-step benchmark's CPU-checkable parts: arguments, sizes, ratios.
(The timings themselves need a GPU: ``python -m carvelab.trials.bench_step``.)"""
import pytest

from carvelab.trials import bench_step


def test_sizes_are_the_issue_sizes_and_split_into_whole_heads():
    s, m, lg = (bench_step.SIZES[k] for k in ("small", "medium", "large"))
    assert (s.d_model, s.n_layers, s.seq_len, s.batch) == (128, 2, 128, 64)
    assert (m.d_model, m.n_layers, m.seq_len, m.batch) == (512, 4, 512, 64)
    assert (lg.d_model, lg.n_layers, lg.seq_len, lg.batch) == (1024, 8, 2048, 8)
    for size in (s, m, lg):
        cfg = bench_step.our_config("gdn2", size, 8192)
        assert cfg.n_heads * cfg.head_dim_k == size.d_model and cfg.head_dim_k == size.head_dim


@pytest.mark.parametrize("argv, match", [
    (["--sizes", "tiny"], r"--sizes: \['tiny'\] not allowed"),
    (["--models", "kda,mamba"], r"--models: \['mamba'\] not allowed"),
    (["--variants", ""], r"--variants: \[\] not allowed"),
])
def test_bad_arguments_name_the_flag_and_the_choices(argv, match, capsys):
    with pytest.raises(SystemExit):
        bench_step.parse_args(argv)
    assert __import__("re").search(match, capsys.readouterr().err)


def test_ratios_against_fla_and_our_before():
    rows = {"ours:before": {"ms_per_step": 10.0}, "ours:after": {"ms_per_step": 4.0}, "fla": {"ms_per_step": 8.0},
            "ours:fast": {"error": "boom"}}
    bench_step._ratios(rows)
    assert rows["ours:after"]["x_fla"] == 0.5 and rows["ours:after"]["x_before"] == 0.4
    assert rows["ours:before"]["x_before"] == 1.0 and "x_fla" not in rows["fla"]
    assert "x_fla" not in rows["ours:fast"]
    rows = {"ours:graph": {"ms_per_step": 4.0, "peak_mem_mb": 1000.0},
            "ours:graph_ce": {"ms_per_step": 3.0, "peak_mem_mb": 600.0}}
    bench_step._ratios(rows)
    assert rows["ours:graph_ce"]["x_graph"] == 0.75 and rows["ours:graph_ce"]["peak_mem_x_graph"] == 0.6
    assert "x_graph" not in rows["ours:graph"]
    rows = {"ours:graph": {"ms_per_step": 4.0, "peak_mem_mb": 1000.0}, "ours:graph_conv": {"ms_per_step": 3.0}}
    bench_step._ratios(rows)
    assert rows["ours:graph_conv"]["x_graph"] == 0.75 and "peak_mem_x_graph" not in rows["ours:graph_conv"]


def test_the_content_gate_cost_is_carve_over_gdn2_in_the_same_variant():
    by_model = {"gdn2": {"ours:graph": {"ms_per_step": 4.0}, "ours:graph_loop": {"ms_per_step": 4.0}},
                "carve": {"ours:graph": {"ms_per_step": 5.0}, "ours:graph_loop": {"ms_per_step": 10.0},
                          "ours:fast": {"ms_per_step": 3.0}}}
    bench_step._content_cost(by_model)
    carve = by_model["carve"]
    assert carve["ours:graph"]["x_gdn2"] == 1.25 and carve["ours:graph_loop"]["x_gdn2"] == 2.5
    assert "x_gdn2" not in carve["ours:fast"]  # no gdn2 row of that variant
    assert "x_gdn2" not in by_model["gdn2"]["ours:graph"]
    assert bench_step.our_config("carve", bench_step.SIZES["small"], 8192).content_gate


@pytest.mark.parametrize("name, group", [
    ("_intra_fwd_kernel", "recurrence (ours)"),
    ("_content_bwd_kernel", "recurrence (ours)"),
    ("_conv_bwd_pre_kernel", "conv / norm (ours)"),
    ("_norm_fwd_kernel", "conv / norm (ours)"),
    ("_decay_bwd_kernel", "gates / swiglu / loss (ours)"),
    ("_swiglu_fwd_kernel", "gates / swiglu / loss (ours)"),
    ("_ce_fwd_kernel", "gates / swiglu / loss (ours)"),
    ("_decay_grad_kernel", "recurrence (ours)"),  # the recurrence's own decay gradient
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("chunk_gated_delta_rule_fwd_kernel_h_blockdim64", "triton (fla)"),
    ("l2norm_fwd_kernel1", "norm"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise / reduction / copy"),
    ("void cunn_SoftMaxForward<4, float>", "cross-entropy / softmax"),
    ("Memset (Device)", "other"),
])
def test_kernels_are_grouped_by_name(name, group):
    assert bench_step.kernel_group(name) == group


def test_the_breakdown_sums_per_group_and_ranks_the_costliest():
    per_name = [("_intra_fwd_kernel", 2.0, 4), ("_state_fwd_kernel", 1.0, 4), ("nvjet_a", 5.0, 30),
                ("Memset (Device)", 0.1, 2)]
    out = bench_step.kernel_breakdown(per_name, top=2)
    assert out["kernel_ms_by_group"] == {"matmul": 5.0, "recurrence (ours)": 3.0, "other": 0.1}
    assert list(out["kernel_ms_by_group"]) == ["matmul", "recurrence (ours)", "other"]
    assert [k["name"] for k in out["top_kernels"]] == ["nvjet_a", "_intra_fwd_kernel"]
    assert out["top_kernels"][1] == {"name": "_intra_fwd_kernel", "group": "recurrence (ours)",
                                     "ms_per_step": 2.0, "calls_per_step": 4}


@pytest.mark.parametrize("variant, on", [
    ("graph", set()), ("before", set()), ("graph_conv", {"conv"}), ("graph_fused", {"conv", "norm"}),
    ("graph_gates", {"conv", "norm", "joint", "gates"}),
])
def test_each_variant_turns_on_exactly_its_fused_pieces(variant, on):
    from carvelab.kernels.fused import PIECES

    with bench_step.fused_pieces(variant):
        got = {name for name, piece in PIECES.items() if piece.enabled()}
    assert got == on
    assert set(bench_step.VARIANT_PIECES) <= set(bench_step.VARIANTS)


def test_the_table_shows_both_busy_measures_and_error_rows(capsys):
    row = {"size": "small", "model": "kda", "who": "ours:graph_all", "ms_per_step": 2.0, "tokens_per_s": 4.0e6,
           "mfu": 0.04, "gpu_busy_pct": 80.0, "gpu_busy_timed_pct": 95.0, "kernels_per_step": 241.0,
           "peak_mem_mb": 590.0, "kernel_ms_by_group": {"matmul": 0.4}}
    failed = {"size": "small", "model": "kda", "who": "fla", "error": "RuntimeError: out of memory"}
    bench_step.print_table({"device": "GPU", "torch": "t", "triton": "tr", "fla": None, "rows": [row, failed]})
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("size"))
    line = next(line for line in out.splitlines() if "ours:graph_all" in line and "matmul" not in line)
    cols = header.split()
    assert cols[cols.index("busy%") + 1:cols.index("busy%") + 3] == ["busy%t", "kern/step"]
    assert line.split()[-4:] == ["80.0", "95.0", "241", "590"]
    assert "fla              ERROR RuntimeError: out of memory" in out
