"""The Conv1d export padding rule holds for every kept-tap pattern, kernel size and padding."""
import itertools

import pytest
import torch
import torch.nn as nn

from plinio.methods import PIT


class PaddedConv(nn.Module):
    """ConstantPad1d (folded at export) -> Conv1d -> ReLU -> 1x1 conv (so the first is searched)."""

    def __init__(self, k: int, d: int, padding, pad=(0, 0)) -> None:
        super().__init__()
        self.pad = nn.ConstantPad1d(pad, 0.0)
        self.conv = nn.Conv1d(2, 3, k, dilation=d, padding=padding)
        self.head = nn.Conv1d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(self.pad(x))))


CASES = [(k, d, padding, pad) for k, d in itertools.product((2, 3, 4, 6, 7, 9), (1, 3))
         for padding, pad in (("same", (0, 0)), (0, ((k - 1) * d, 0)), (1, (0, 0)), (0, (2, 1)))]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("k, d, padding, pad", CASES)
def test_every_time_mask_exports_exactly(k, d, padding, pad):
    torch.manual_seed(k * 10 + d)
    pit = PIT(PaddedConv(k, d, padding, pad), input_shape=(2, 30))
    pit.eval()
    conv = pit.seed.conv
    x = torch.randn(2, 2, 30)
    gen = torch.Generator().manual_seed(k)
    for _ in range(4):
        with torch.no_grad():
            conv.timestep_masker.beta.copy_(torch.rand(k, generator=gen) * 0.6)
            conv.dilation_masker.gamma.copy_(torch.rand(conv.dilation_masker.size, generator=gen))
        exported = pit.arch_export(add_bn=False).eval()
        new = exported.get_submodule("conv")
        assert new.kernel_size == conv.kernel_size_opt and new.dilation == conv.dilation_opt
        with torch.no_grad():
            ref = pit(x)
            assert torch.allclose(exported(x), ref, atol=1e-5 * max(1.0, ref.abs().max().item()))
