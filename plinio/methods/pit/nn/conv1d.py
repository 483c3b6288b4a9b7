"""PITConv1d: Conv1d with channel, receptive-field and dilation masks (docs/behaviour.md §5.1)."""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods.pit.nn.binarizer import PITBinarizer
from plinio.methods.pit.nn.conv_common import ConvHyperParams
from plinio.methods.pit.nn.dilation_masker import PITDilationMasker
from plinio.methods.pit.nn.features_masker import PITFeaturesMasker
from plinio.methods.pit.nn.module import PITWeightedModule, check_groups
from plinio.methods.pit.nn.timestep_masker import PITTimestepMasker


class PITConv1d(ConvHyperParams, PITWeightedModule):
    """Conv1d whose output channels, kept taps (a suffix ending at the newest tap) and
    dilation (multiples of 2^m from the newest tap) are searched."""

    plinio_conv_forward = True  # forward computes conv(x, *masked_weight_and_bias()) (plinio.fast)

    def __init__(self, conv: nn.Conv1d, out_length: int, out_features_masker: PITFeaturesMasker,
                 timestep_masker: PITTimestepMasker, dilation_masker: PITDilationMasker,
                 binarization_threshold: float = 0.5) -> None:
        check_groups(type(self).__name__, conv.in_channels, conv.out_channels, conv.groups)
        super().__init__(conv, conv.in_channels, conv.out_channels, out_features_masker, binarization_threshold)
        self.copy_conv_hparams(conv)
        k = self.kernel_size[0]
        for name, masker, cls in (("timestep_masker", timestep_masker, PITTimestepMasker),
                                  ("dilation_masker", dilation_masker, PITDilationMasker)):
            if not isinstance(masker, cls):
                raise TypeError(f"PITConv1d: {name} must be a {cls.__name__}, got {type(masker).__name__}")
            masker.check_kernel("PITConv1d", name, k)
        self.timestep_masker = timestep_masker
        self.dilation_masker = dilation_masker
        self.out_length = int(out_length)
        self.out_positions = int(out_length)

    @property
    def rf(self) -> int:
        """Number of kernel taps of the searched kernel."""
        return self.kernel_size[0]

    @property
    def train_rf(self) -> bool:
        """Whether the receptive-field mask is trained."""
        return self.timestep_masker.trainable

    @train_rf.setter
    def train_rf(self, value: bool) -> None:
        self.timestep_masker.trainable = value

    @property
    def train_dilation(self) -> bool:
        """Whether the dilation mask is trained."""
        return self.dilation_masker.trainable

    @train_dilation.setter
    def train_dilation(self, value: bool) -> None:
        self.dilation_masker.trainable = value

    @property
    def time_mask(self) -> torch.Tensor:
        """Binarized mask over the kernel taps: bin(θ_β) ⊙ bin(θ_γ)."""
        thr = self.binarization_threshold
        return PITBinarizer.apply(self.timestep_masker.tap_theta(self.rf), thr) * \
            PITBinarizer.apply(self.dilation_masker.tap_theta(self.rf), thr)

    def time_mask_or_none(self) -> Optional[torch.Tensor]:
        return self.time_mask

    def fused_time_params(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        return self.timestep_masker.fused_param_for(self.rf), self.dilation_masker.fused_param_for(self.rf)

    @property
    def has_time_masks(self) -> bool:
        return not (self.timestep_masker.frozen and self.dilation_masker.frozen)

    @property
    def k_eff(self) -> torch.Tensor:
        """Continuous kernel size: Σ_i mean-of-terms(θ_β[i]) · mean-of-terms(θ_γ[i])."""
        tm, dm, k = self.timestep_masker, self.dilation_masker, self.rf
        return ((tm.tap_theta(k) / tm.tap_terms(k)) * (dm.tap_theta(k) / dm.tap_terms(k))).sum()

    def kernel_volume(self, binarized: bool) -> Any:
        return self.time_mask.sum() if binarized else self.k_eff

    @property
    def kernel_size_opt(self) -> Tuple[int]:
        """Number of kept taps."""
        return (int(self.time_mask.detach().sum()),)

    @property
    def dilation_opt(self) -> Tuple[int]:
        """Dilation of the kept taps: 2^m times the original dilation."""
        thr = self.binarization_threshold
        keep = (self.dilation_masker.tap_theta(self.rf).detach() > thr).tolist()
        k = self.rf
        distances = [k - 1 - j for j in range(k) if keep[j] and j != k - 1]
        step = min(distances) if distances else 1
        return (step * self.dilation[0],)

    def dense_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return self.conv_forward(F.conv1d, x, weight, bias)

    def summary(self) -> Dict[str, Any]:
        return {"in_features": self.in_features_opt, "out_features": self.out_features_opt,
                "kernel_size": self.kernel_size_opt, "dilation": self.dilation_opt,
                "type": type(self).__name__}

    def export(self, extra_padding: Tuple[int, int] = (0, 0)) -> List[nn.Module]:
        """Pruned Conv1d (preceded by a ConstantPad1d when left and right padding differ).

        ``extra_padding`` is zero padding applied just before this layer (a folded pad node).
        With kept taps k' at dilation d' ending at the newest tap, the left padding becomes
        p_l - (K-1)d + (k'-1)d' and the right one stays p_r, so outputs are unchanged.
        """
        time_keep = torch.nonzero(self.time_mask.detach() > 0.5).flatten()
        k_new = int(time_keep.numel())
        d_new = self.dilation_opt[0]
        weight = self.weight.detach()[..., time_keep.to(self.weight.device)]
        weight, bias = self._export_weight_bias(weight)
        cout = weight.shape[0]
        cin = cout if self.is_depthwise else weight.shape[1]
        groups = cout if self.is_depthwise else 1
        modules: List[nn.Module] = []
        time_changed = k_new != self.rf or d_new != self.dilation[0]
        extra = tuple(extra_padding) != (0, 0)
        if self.padding_mode != "zeros" and (time_changed or extra):
            raise ValueError("PITConv1d: cannot export a pruned kernel with padding_mode="
                             f"{self.padding_mode!r}")
        if self.padding_mode != "zeros" or not (time_changed or extra):
            padding: Any = self.padding
        else:
            p_l, p_r = self.padding_lr[0]
            p_l += extra_padding[0]
            p_r += extra_padding[1]
            new_l = p_l - (self.rf - 1) * self.dilation[0] + (k_new - 1) * d_new
            if new_l == p_r and new_l >= 0:
                padding = new_l
            else:
                modules.append(nn.ConstantPad1d((new_l, p_r), 0.0))
                padding = 0
        conv = nn.Conv1d(cin, cout, k_new, stride=self.stride, padding=padding, dilation=d_new, groups=groups,
                         bias=bias is not None, padding_mode=self.padding_mode)
        conv = conv.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                conv.bias.copy_(bias)
        modules.append(conv)
        return modules
