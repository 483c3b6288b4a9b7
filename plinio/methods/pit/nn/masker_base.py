"""Shared machinery of the PIT maskers: the mask parameter and its trainable switch.

A masker owns one mask parameter (``alpha``, ``beta`` or ``gamma``). Whether it is trained is
kept in a boolean buffer (so it is saved by ``state_dict()``) mirrored by a Python flag (so
that reading it never synchronises with the device). A non-trainable masker passes its
parameter through ``torch.where(flag, p, p.detach())``: the parameter takes part in every
step and receives an exactly-zero gradient, so DistributedDataParallel (which needs a
gradient for every parameter that requires one) keeps working, ``requires_grad`` is never
toggled, and switching needs no recompilation. Frozen maskers hold a buffer of ones instead
of a parameter.
"""
import operator
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from plinio.methods.dnas_base.switches import checked_switch


def positive_int(owner: str, name: str, value: Any) -> int:
    """``value`` as an int (any integer type but bool, e.g. a numpy integer), or ValueError."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return number


def masker_modules(root: nn.Module) -> Tuple["PITMaskerBase", ...]:
    """Every PIT masker under ``root``, by a plain walk of the module tree (the wrappers walk
    once, at conversion: ``nn.Module.modules()`` costs about 2 µs per module)."""
    found: List[PITMaskerBase] = []
    seen = set()
    stack = [root]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if isinstance(module, PITMaskerBase):
            found.append(module)
        stack.extend(child for child in module._modules.values() if child is not None)
    return tuple(found)


def masker_parameters(maskers: Iterable["PITMaskerBase"]) -> List[nn.Parameter]:
    """The mask parameters the ``maskers`` hold now (a replaced parameter counts): what the
    per-step NaN check reads."""
    return [p for masker in maskers for p in masker._parameters.values() if p is not None]


class PITMaskerBase(nn.Module):
    """Base class: one mask parameter named ``param_name`` plus the trainable switch."""

    param_name: str = ""
    frozen: bool = False

    def __init__(self, size: int, trainable: bool) -> None:
        super().__init__()
        size = positive_int(type(self).__name__, "size", size)
        trainable = checked_switch(type(self).__name__, "trainable", trainable)
        ones = torch.ones(size, dtype=torch.float32)
        if self.frozen:
            self.register_buffer(self.param_name, ones)
            trainable = False
        else:
            self.register_parameter(self.param_name, nn.Parameter(ones))
        self.register_buffer("trainable_flag", torch.tensor(bool(trainable)))
        self._trainable = bool(trainable)

    @property
    def size(self) -> int:
        """Number of mask entries."""
        return int(self.raw.shape[0])

    @property
    def raw(self) -> torch.Tensor:
        """The mask parameter (or the frozen buffer of ones) as stored."""
        return getattr(self, self.param_name)

    @property
    def trainable(self) -> bool:
        """Whether the mask parameter receives gradients (always False when frozen)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        value = checked_switch(type(self).__name__, "trainable", value) and not self.frozen
        self._trainable = value
        self.trainable_flag.fill_(value)

    def param_for_use(self) -> torch.Tensor:
        """The parameter as the mask math must see it: zero gradient when not trainable."""
        p = self.raw
        if self.frozen:
            return p
        return torch.where(self.trainable_flag, p, p.detach())

    def fast_param(self) -> torch.Tensor:
        """``param_for_use()`` for the fast path: in eager mode a trainable parameter is used
        as it is (``where(True, p, p.detach())`` is ``p``, in value and in gradient), which
        saves two small ops and an autograd node per masker and step; under torch.compile
        the ``where`` stays, so that switching the flag causes no recompilation."""
        if self._trainable and not torch.compiler.is_compiling():
            return self.raw
        return self.param_for_use()

    def fused_param(self) -> Optional[torch.Tensor]:
        """Argument for ``plinio.ops.pit_masked_weight``: None (all ones) when frozen."""
        return None if self.frozen else self.fast_param()

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, local_metadata: Dict[str, Any],
                              strict: bool, missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "trainable_flag"
        if key in state_dict:
            self._trainable = bool(state_dict[key]) and not self.frozen

    def extra_repr(self) -> str:
        return f"size={self.size}, trainable={self._trainable}"


class PITTapMaskerBase(PITMaskerBase):
    """Shared part of the receptive-field and dilation maskers: a mask over the ``rf`` taps of
    a Conv1d kernel (index ``rf - 1`` is the newest tap).

    θ[j] = Σ_p M[j, p] · p̂_p with p̂ = |parameter| and its last entry forced to 1, for a 0/1
    matrix M of shape (rf, size) that each masker defines. A masker of rf 1 is accepted on a
    kernel of any size, as in PLiNIO: that dimension is not searched (one entry, forced to 1,
    so every tap is kept; the parameter gets a zero gradient).
    """

    def __init__(self, rf: Any, trainable: bool) -> None:
        rf = positive_int(type(self).__name__, "rf", rf)
        super().__init__(self.entries(rf), trainable)
        self.rf = rf
        last = torch.zeros(self.size, dtype=torch.bool)
        last[-1] = True
        self.register_buffer("_last", last, persistent=False)

    @staticmethod
    def entries(taps: int) -> int:
        """Number of parameter entries of a masker that searches ``taps`` taps."""
        raise NotImplementedError

    def check_kernel(self, owner: str, name: str, taps: int) -> None:
        """ValueError unless the masker fits a kernel of ``taps`` taps (rf = taps, or rf = 1)."""
        if self.rf not in (taps, 1):
            raise ValueError(f"{owner}: {name} has rf={self.rf} but the kernel has {taps} taps; give it "
                             f"rf={taps} to search that dimension, or rf=1 to keep it fixed")

    def param_hat(self) -> torch.Tensor:
        """p̂ = |parameter| with the last entry forced to 1."""
        p = self.param_for_use()
        return torch.where(self._last, torch.ones_like(p), p.abs())

    def tap_matrix(self, taps: int) -> torch.Tensor:
        """M for a kernel of ``taps`` taps: (taps, size); all ones when not searched."""
        if taps == self.rf:
            return self._tap_matrix
        return self._tap_matrix.new_ones(taps, self.size)

    def tap_terms(self, taps: int) -> torch.Tensor:
        """Number of p̂ terms summed in each tap's θ (for the continuous k_eff)."""
        return self.tap_matrix(taps).sum(1)

    def tap_theta(self, taps: int) -> torch.Tensor:
        """θ over the ``taps`` taps of the layer's kernel (the masker's own θ when rf = taps)."""
        theta = self.theta
        return theta if taps == self.rf else theta.expand(taps)

    def fused_param_for(self, taps: int) -> Optional[torch.Tensor]:
        """Argument for ``plinio.ops.pit_masked_weight`` on a kernel of ``taps`` taps: None when
        frozen; when not searched, the ``entries(taps)`` ones the op expects, connected to the
        parameter with a zero gradient (as the reference path gives it)."""
        if self.frozen or taps == self.rf:
            return self.fused_param()
        return torch.where(self._last, 1.0, self.fast_param()).repeat(self.entries(taps))
