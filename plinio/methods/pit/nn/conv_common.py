"""Hyper-parameter handling shared by PITConv1d and PITConv2d."""
from typing import Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F


def explicit_padding(conv: nn.modules.conv._ConvNd) -> Tuple[Tuple[int, int], ...]:
    """Per spatial dim (left, right) zero padding the layer applies ('same'/'valid' resolved)."""
    pads = []
    for i, k in enumerate(conv.kernel_size):
        if conv.padding == "valid":
            pads.append((0, 0))
        elif conv.padding == "same":
            total = conv.dilation[i] * (k - 1)
            pads.append((total // 2, total - total // 2))
        else:
            p = conv.padding[i]
            pads.append((p, p))
    return tuple(pads)


class ConvHyperParams:
    """Copies the hyper-parameters of a conv and replays its forward with another weight.
    Listed first among a PIT conv's bases, so that its properties override the defaults of
    ``PITWeightedModule``."""

    def copy_conv_hparams(self, conv: nn.modules.conv._ConvNd) -> None:
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding: Union[str, Tuple[int, ...]] = conv.padding if isinstance(conv.padding, str) \
            else tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self._reversed_padding_repeated_twice = list(conv._reversed_padding_repeated_twice)
        self.padding_lr = explicit_padding(conv)

    @property
    def is_depthwise(self) -> bool:
        """Grouped convs are depthwise here (other groupings are refused at conversion)."""
        return self.groups > 1

    @property
    def groups_divisor(self) -> int:
        return self.groups

    def conv_forward(self, fn, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        """Same computation as ``nn.ConvNd._conv_forward``."""
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return fn(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return fn(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
