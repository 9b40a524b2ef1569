"""Shared test set-up: Triton's interpreter for CPU tensors, fixed seeds, float64-free."""
import os

# Must be set before any @triton.jit function runs (Triton reads it at launch time).
os.environ.setdefault("TRITON_INTERPRET", "1")
# Every Ray listener binds to loopback (see the scheduler module).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
