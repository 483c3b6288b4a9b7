"""Base classes of the PIT layers: cost interface, input features and masked weights."""
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from plinio.fast.sparse_step import in_sparse_step, sparse_call
from plinio.methods.pit.nn.binarizer import PITBinarizer
from plinio.methods.pit.nn.features_calculator import ConstFeaturesCalculator, FeaturesCalculator
from plinio.methods.pit.nn.features_masker import PITFeaturesMasker


def fused_ops_available() -> bool:
    """Whether ``plinio.ops.pit_masked_weight`` can be imported (the fast mask path)."""
    try:
        from plinio import ops
    except Exception:  # the op library is optional for the reference path
        return False
    return callable(getattr(ops, "pit_masked_weight", None))


class PITModule(nn.Module):
    """Common part of every PIT layer.

    ``out_positions`` is the number of output positions summed over every call of the layer
    and ``calls`` the number of calls (both set by the conversion; a standalone layer counts
    one call), so that ``get_macs()`` counts each call once.
    """

    plinio_leaf = True  # traced as one graph node (plinio.graph.tracing)

    def __init__(self, in_features: int, binarization_threshold: float = 0.5) -> None:
        super().__init__()
        self.binarization_threshold = float(binarization_threshold)
        self.input_features_calculator: FeaturesCalculator = ConstFeaturesCalculator(in_features)
        self.following_bn_args: Optional[Dict[str, Any]] = None
        self.out_positions = 1
        self.calls = 1

    @property
    def in_features_opt(self) -> int:
        """Number of input channels kept by the current binarized masks."""
        return int(self.input_features_calculator.features_mask.detach().sum())

    def input_kept_indices(self) -> torch.Tensor:
        """Indices of the kept input channels (used by export)."""
        mask = self.input_features_calculator.features_mask.detach()
        return torch.nonzero(mask > 0.5).flatten()

    def get_size(self) -> torch.Tensor:
        """Differentiable parameter count with the continuous masks (docs/behaviour.md §4.1)."""
        return self._size(False)

    def get_macs(self) -> torch.Tensor:
        """Differentiable MACs with the continuous masks, every call counted (docs/behaviour.md §4.1)."""
        return self._macs(False)

    def get_size_binarized(self) -> torch.Tensor:
        """Parameter count with the binarized masks (straight-through gradient)."""
        return self._size(True)

    def get_macs_binarized(self) -> torch.Tensor:
        """MACs with the binarized masks (straight-through gradient)."""
        return self._macs(True)

    def _size(self, binarized: bool) -> torch.Tensor:
        raise NotImplementedError

    def _macs(self, binarized: bool) -> torch.Tensor:
        raise NotImplementedError

    def summary(self) -> Dict[str, Any]:
        """Architecture found so far (docs/behaviour.md §2.1)."""
        raise NotImplementedError

    def export(self) -> List[nn.Module]:
        """Plain ``torch.nn`` modules (applied in order) equivalent to this layer's current masks."""
        raise NotImplementedError


class PITWeightedModule(PITModule):
    """Common part of PITConv1d / PITConv2d / PITLinear: a weight masked per output channel."""

    def __init__(self, layer: nn.Module, in_features: int, out_features: int,
                 out_features_masker: PITFeaturesMasker, binarization_threshold: float) -> None:
        super().__init__(in_features, binarization_threshold)
        if not isinstance(out_features_masker, PITFeaturesMasker):
            raise TypeError(f"{type(self).__name__}: out_features_masker must be a PITFeaturesMasker, "
                            f"got {type(out_features_masker).__name__}")
        if out_features_masker.out_channels != out_features:
            raise ValueError(f"{type(self).__name__}: out_features_masker has {out_features_masker.out_channels} "
                             f"channels but the layer has {out_features} output features")
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.out_features_masker = out_features_masker
        self.use_fused_ops = fused_ops_available()

    # ---- masks --------------------------------------------------------------------------
    @property
    def out_features_eff(self) -> torch.Tensor:
        """Continuous number of output channels Σ θ_α."""
        return self.out_features_masker.theta.sum()

    @property
    def features_mask(self) -> torch.Tensor:
        """Binarized output-channel mask (straight-through gradient)."""
        return PITBinarizer.apply(self.out_features_masker.theta, self.binarization_threshold)

    @property
    def out_features_opt(self) -> int:
        """Number of output channels kept by the current binarized mask."""
        return int(self.features_mask.detach().sum())

    def output_kept_indices(self) -> torch.Tensor:
        """Indices of the kept output channels (used by export)."""
        return torch.nonzero(self.features_mask.detach() > 0.5).flatten()

    @property
    def train_features(self) -> bool:
        """Whether the output-channel mask is trained."""
        return self.out_features_masker.trainable

    @train_features.setter
    def train_features(self, value: bool) -> None:
        self.out_features_masker.trainable = value

    def time_mask_or_none(self) -> Optional[torch.Tensor]:
        """Binarized mask over the last weight axis, or None when the layer has none."""
        return None

    def fused_time_params(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(beta, gamma) arguments of ``pit_masked_weight``."""
        return None, None

    @property
    def has_time_masks(self) -> bool:
        """Whether the weight has kernel-tap masks besides the channel mask (whether
        ``fused_time_params`` gives anything but (None, None)), without building them."""
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``dense_forward`` with the masked weights; in a sparse step of the fast path
        (``plinio.fast.sparse_step``) only the kept output rows and live input channels, with
        the same values and gradients. A compact layer whose only mask is its channel mask
        convolves its unmasked weight there, and the native op gives α its gradient: the
        mask is 1 on every row it computes, and no masked weight is built."""
        mask = self._channel_mask_args()
        if mask is None:
            weight, bias = self.masked_weight_and_bias()
            call = sparse_call(self, x, weight.requires_grad)
        else:  # the masked weight would require a gradient iff one of these does
            call = sparse_call(self, x, any(t is not None and t.requires_grad
                                            for t in (self.weight, self.bias, mask[0])))
            if call is not None and call.takes_mask_of(self.out_features_masker, x):
                return call(x, self.weight, self.bias, mask=mask)
            weight, bias = self.masked_weight_and_bias()
        if call is not None:
            return call(x, weight, bias)
        return self.dense_forward(x, weight, bias)

    def _channel_mask_args(self) -> Optional[Tuple[torch.Tensor, int]]:
        """(α, keep-alive channels) in a sparse step when the channel mask is the layer's only
        searched mask and α has the weight's dtype (what ``sparse_call``'s native op takes
        instead of a masked weight), else None."""
        if torch.compiler.is_compiling() or not (self.use_fused_ops and in_sparse_step()) or self.has_time_masks:
            return None
        alpha = self.out_features_masker.fused_param()
        if alpha is None or alpha.dtype != self.weight.dtype:
            return None
        return alpha, self.out_features_masker.keep_alive_channels

    def dense_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The layer's operation with the given (masked) weight and bias."""
        raise NotImplementedError

    def masked_weight_and_bias(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Weight and bias with the current binarized masks: what forward() computes with."""
        if self.use_fused_ops:
            from plinio import ops
            beta, gamma = self.fused_time_params()
            return ops.pit_masked_weight(self.weight, self.bias, self.out_features_masker.fused_param(),
                                         beta, gamma, threshold=self.binarization_threshold,
                                         keep_alive=self.out_features_masker.keep_alive_channels)
        mask = self.features_mask
        weight = self.weight * mask.view((-1,) + (1,) * (self.weight.dim() - 1))
        time_mask = self.time_mask_or_none()
        if time_mask is not None:
            weight = weight * time_mask
        bias = None if self.bias is None else self.bias * mask
        return weight, bias

    # ---- costs --------------------------------------------------------------------------
    @property
    def groups_divisor(self) -> int:
        """Divisor of the size formula (the original groups of the layer)."""
        return 1

    def kernel_volume(self, binarized: bool) -> Any:
        """Effective number of kernel positions (tensor for Conv1d, int otherwise)."""
        return 1

    def _size(self, binarized: bool) -> torch.Tensor:
        calc = self.input_features_calculator
        cin = calc.features_binarized if binarized else calc.features
        cout = self.features_mask.sum() if binarized else self.out_features_eff
        return cin * cout * self.kernel_volume(binarized) / self.groups_divisor

    def _macs(self, binarized: bool) -> torch.Tensor:
        return self._size(binarized) * self.out_positions

    def _export_weight_bias(self, weight: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Rows of the kept output channels (and, unless depthwise, columns of kept inputs)."""
        out_idx = self.output_kept_indices().to(weight.device)
        w = weight.detach()[out_idx]
        if not self.is_depthwise:
            w = w[:, self.input_kept_indices().to(weight.device)]
        b = None if self.bias is None else self.bias.detach()[out_idx]
        return w.clone(), None if b is None else b.clone()

    @property
    def is_depthwise(self) -> bool:
        """Whether the layer is a depthwise convolution (groups = in = out > 1)."""
        return False


def check_groups(name: str, in_channels: int, out_channels: int, groups: int) -> None:
    """PIT supports plain and depthwise convolutions only."""
    if groups != 1 and not (groups == in_channels == out_channels):
        raise ValueError(f"{name}: grouped convolutions (groups={groups}, in={in_channels}, out={out_channels}) "
                         f"are not supported; only groups=1 or depthwise (groups = in = out). "
                         f"Exclude this layer from the conversion.")


def prod(values: Any) -> int:
    """Product of an iterable of ints."""
    return int(math.prod(values))
