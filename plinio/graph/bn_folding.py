"""BatchNorm folding (docs/behaviour.md §5.3): fold eval-mode BatchNorm statistics into a preceding layer."""
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

def bn_args(bn: nn.modules.batchnorm._BatchNorm) -> Dict[str, Any]:
    """Hyper-parameters remembered for a folded BatchNorm (re-inserted by export)."""
    return {"eps": bn.eps, "momentum": bn.momentum, "affine": bn.affine,
            "track_running_stats": bn.track_running_stats}


def fold_bn(weight: torch.Tensor, bias: Optional[torch.Tensor],
            bn: nn.modules.batchnorm._BatchNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(layer(x))`` for a layer with ``weight``/``bias`` (eval statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: the BatchNorm has no running statistics")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale = scale * bn.weight
        shift = shift * bn.weight + bn.bias
    w = weight * scale.view((-1,) + (1,) * (weight.dim() - 1))
    b = shift if bias is None else bias * scale + shift
    return w, b


def is_foldable(bn: nn.Module) -> bool:
    """A BatchNorm can be folded when it normalises with running statistics."""
    return isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and bn.track_running_stats \
        and bn.running_mean is not None and bn.running_var is not None
