"""PITLinear: Linear with a searched number of output features."""
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods.pit.nn.features_masker import PITFeaturesMasker
from plinio.methods.pit.nn.module import PITWeightedModule


class PITLinear(PITWeightedModule):
    """Linear whose output features are masked by ``out_features_masker``."""

    def __init__(self, linear: nn.Linear, out_features_masker: PITFeaturesMasker,
                 binarization_threshold: float = 0.5) -> None:
        super().__init__(linear, linear.in_features, linear.out_features, out_features_masker,
                         binarization_threshold)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def dense_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def summary(self) -> Dict[str, Any]:
        return {"in_features": self.in_features_opt, "out_features": self.out_features_opt,
                "type": type(self).__name__}

    def export(self) -> List[nn.Module]:
        """The Linear with only the kept output and input features."""
        weight, bias = self._export_weight_bias(self.weight)
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        lin = lin.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(weight)
            if bias is not None:
                lin.bias.copy_(bias)
        return [lin]
