"""Pieces of the sweep benchmarks that need no GPU."""
import pytest
import torch

from carvelab.trials.bench_sweep import concurrency, main, parse_startup_output


def test_concurrency_counts_trials_running_at_an_instant():
    spans = [(0.0, 10.0), (2.0, 4.0), (3.0, 12.0), (10.0, 11.0)]
    assert [concurrency(spans, t) for t in (-1.0, 0.0, 2.5, 3.5, 4.0, 10.0, 11.5, 12.0)] == [0, 1, 2, 3, 2, 2, 1, 0]


def test_startup_output_is_read_from_the_last_line():
    text = "some warning\n{\"first_step_s\": 1.5, \"backend\": \"triton_chunk\", \"status\": \"completed\"}\n"
    assert parse_startup_output(text)["first_step_s"] == 1.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_sweep_benchmark_refuses_a_machine_without_gpu(capsys):
    assert main(["gpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().out
