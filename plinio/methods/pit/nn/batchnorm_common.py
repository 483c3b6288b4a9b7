"""PITBatchNorm base: a BatchNorm that could not be folded, following its producer's mask."""
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods.pit.nn.module import PITModule


class PITBatchNormBase(PITModule):
    """BatchNorm whose affine weight and bias are multiplied by the input-channel mask, so a
    pruned channel stays exactly zero (and export can drop it)."""

    plain_type: type = nn.BatchNorm1d

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__(bn.num_features)
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.momentum = bn.momentum
        self.affine = bn.affine
        self.track_running_stats = bn.track_running_stats
        if bn.affine:
            self.weight = nn.Parameter(bn.weight.detach().clone())
            self.bias = nn.Parameter(bn.bias.detach().clone())
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            buf = getattr(bn, name, None)
            self.register_buffer(name, None if buf is None else buf.detach().clone())

    def _check_input_dim(self, x: torch.Tensor) -> None:
        self.plain_type._check_input_dim(self, x)  # type: ignore[arg-type]

    def masked_weight_and_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Affine weight and bias (ones / zeros when not affine) times the input-channel mask."""
        mask = self.input_features_calculator.features_mask
        weight = mask if self.weight is None else self.weight * mask
        bias = torch.zeros_like(mask) if self.bias is None else self.bias * mask
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        weight, bias = self.masked_weight_and_bias()
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            weight, bias, use_batch_stats, factor, self.eps)

    def _size(self, binarized: bool) -> torch.Tensor:
        calc = self.input_features_calculator
        return 2 * (calc.features_binarized if binarized else calc.features)

    def _macs(self, binarized: bool) -> torch.Tensor:
        calc = self.input_features_calculator
        return (calc.features_binarized if binarized else calc.features) * self.calls

    def summary(self) -> Dict[str, Any]:
        n = self.in_features_opt
        return {"in_features": n, "out_features": n, "type": type(self).__name__}

    def export(self) -> List[nn.Module]:
        """The BatchNorm restricted to the kept channels."""
        idx = self.input_kept_indices()
        bn = self.plain_type(int(idx.numel()), eps=self.eps, momentum=self.momentum, affine=self.affine,
                             track_running_stats=self.track_running_stats)
        ref = self.running_mean if self.weight is None else self.weight
        if ref is not None:
            bn = bn.to(device=ref.device, dtype=ref.dtype)
            idx = idx.to(ref.device)
        with torch.no_grad():
            if self.affine:
                bn.weight.copy_(self.weight[idx])
                bn.bias.copy_(self.bias[idx])
            if self.running_mean is not None:
                bn.running_mean.copy_(self.running_mean[idx])
                bn.running_var.copy_(self.running_var[idx])
                bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return [bn]
