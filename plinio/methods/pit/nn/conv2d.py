"""PITConv2d: Conv2d with a searched number of output channels."""
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods.pit.nn.conv_common import ConvHyperParams
from plinio.methods.pit.nn.features_masker import PITFeaturesMasker
from plinio.methods.pit.nn.module import PITWeightedModule, check_groups, prod


class PITConv2d(ConvHyperParams, PITWeightedModule):
    """Conv2d whose output channels are masked by ``out_features_masker``."""

    plinio_conv_forward = True  # forward computes conv(x, *masked_weight_and_bias()) (plinio.fast)

    def __init__(self, conv: nn.Conv2d, out_height: int, out_width: int,
                 out_features_masker: PITFeaturesMasker, binarization_threshold: float = 0.5) -> None:
        check_groups(type(self).__name__, conv.in_channels, conv.out_channels, conv.groups)
        super().__init__(conv, conv.in_channels, conv.out_channels, out_features_masker, binarization_threshold)
        self.copy_conv_hparams(conv)
        self.out_height = int(out_height)
        self.out_width = int(out_width)
        self.out_positions = self.out_height * self.out_width

    def kernel_volume(self, binarized: bool) -> Any:
        return prod(self.kernel_size)

    def dense_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return self.conv_forward(F.conv2d, x, weight, bias)

    def summary(self) -> Dict[str, Any]:
        return {"in_features": self.in_features_opt, "out_features": self.out_features_opt,
                "type": type(self).__name__}

    def export(self) -> List[nn.Module]:
        """The Conv2d with only the kept output (and input) channels."""
        weight, bias = self._export_weight_bias(self.weight)
        cout = weight.shape[0]
        cin = cout if self.is_depthwise else weight.shape[1]
        conv = nn.Conv2d(cin, cout, self.kernel_size, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, groups=cout if self.is_depthwise else 1,
                         bias=bias is not None, padding_mode=self.padding_mode)
        conv = conv.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        return [conv]
