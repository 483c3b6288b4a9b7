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
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn


class PITMaskerBase(nn.Module):
    """Base class: one mask parameter named ``param_name`` plus the trainable switch."""

    param_name: str = ""
    frozen: bool = False

    def __init__(self, size: int, trainable: bool) -> None:
        super().__init__()
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{type(self).__name__}: size must be a positive int, got {size!r}")
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
        value = bool(value) and not self.frozen
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
