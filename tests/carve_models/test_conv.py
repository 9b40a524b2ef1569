"""The depthwise causal short convolution."""
import torch
from torch.nn import functional as F

from carvelab.carve_models.conv import ShortConv


def test_matches_causal_sum_and_silu():
    conv = ShortConv(5, 4)
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(2, 11, 5)
    y = conv(x)
    w = conv.weight[:, 0]  # [C, width]
    padded = torch.cat((torch.zeros(2, 3, 5), x), 1)
    expected = torch.stack([(padded[:, t:t + 4] * w.T).sum(1) for t in range(11)], 1)
    torch.testing.assert_close(y, F.silu(expected))


def test_is_causal():
    conv = ShortConv(3, 4)
    x = torch.randn(1, 9, 3)
    x2 = x.clone()
    x2[0, 6] += 1.0
    y, y2 = conv(x), conv(x2)
    assert torch.equal(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6], y2[:, 6])
