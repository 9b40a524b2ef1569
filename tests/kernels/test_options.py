"""RecurrenceOptions: one validated set of settings; errors name the field, the value and what is allowed."""
import dataclasses

import pytest
import torch

from carvelab.kernels import RecurrenceOptions, gated_delta, gated_delta_reference
from carvelab.kernels.options import SETTINGS, recurrence_options

BAD = [
    (dict(erase_axis="row"), r"erase_axis='row' is not allowed; choose one of \['key', 'value'\]"),
    (dict(covariance="full"), r"covariance='full' is not allowed; choose one of \['reset', 'propagate'\]"),
    (dict(chunk_size=0), r"chunk_size=0 must be a positive int"),
    (dict(chunk_size=True), r"chunk_size=True must be a positive int"),
    (dict(scale=-1.0), r"scale=-1.0 must be a positive number, or None"),
    (dict(precision="half"), r"precision='half' is not allowed; choose one of \['auto', 'exact', 'fast'\]"),
    (dict(backend="cuda"), r"backend='cuda' is not allowed; choose one of \['auto', 'triton', 'torch', 'reference'\]"),
    (dict(backend="triton", chunk_size=128), r"chunk_size=128 is not allowed on the Triton backend.*\[16, 32, 64\]"),
    (dict(backend="torch", precision="fast"), r"precision='fast' runs on the Triton backend only; backend='torch'"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[
    "erase_axis", "covariance", "chunk-0", "chunk-bool", "scale", "precision", "backend", "triton-chunk", "torch-fast",
])
def test_bad_settings_raise_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecurrenceOptions(**kwargs)


def test_options_are_frozen_and_hashable():
    options = RecurrenceOptions(chunk_size=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.chunk_size = 16
    assert hash(options) == hash(RecurrenceOptions(chunk_size=32)) and options != RecurrenceOptions()


def test_keyword_settings_are_laid_over_the_options():
    base = RecurrenceOptions(erase_axis="value", chunk_size=32)
    assert recurrence_options(base) is base
    assert recurrence_options(base, chunk_size=16) == RecurrenceOptions(erase_axis="value", chunk_size=16)
    assert recurrence_options(chunk_size=16) == RecurrenceOptions(chunk_size=16)
    assert set(SETTINGS) == {f.name for f in dataclasses.fields(RecurrenceOptions)}
    with pytest.raises(TypeError, match=r"unknown recurrence setting\(s\) \['chunk'\]"):
        recurrence_options(chunk=16)
    with pytest.raises(TypeError, match="options must be a RecurrenceOptions"):
        recurrence_options({"chunk_size": 16})


def test_public_entry_points_take_options_or_keywords_alike():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 21, 2, 8, generator=gen) for _ in range(3))
    g, b, w = -torch.rand(1, 21, 2, 8, generator=gen), torch.rand(1, 21, 2, 8, generator=gen), torch.rand(1, 21, 2)
    options = RecurrenceOptions(erase_axis="value", chunk_size=16, scale=0.5, backend="torch")
    by_options = gated_delta(q, k, v, g, b, w, None, options)
    by_keywords = gated_delta(q, k, v, g, b, w, erase_axis="value", chunk_size=16, scale=0.5, backend="torch")
    assert torch.equal(by_options.o, by_keywords.o)
    want = gated_delta_reference(q, k, v, g, b, w, options=options)
    assert ((by_options.o - want.o).abs().max() / want.o.abs().max()).item() <= 1e-5
    with pytest.raises(TypeError, match="options come after r"):
        gated_delta(q, k, v, g, b, w, options)
