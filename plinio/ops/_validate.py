"""Input checks of the public ops, shared by every backend and by the fake kernels, so a
mistake gives the same clear message whichever kernel would have run."""
from typing import Optional, Sequence

import torch
from torch import Tensor

from .reference import dilation_levels


def check_combine(branches: Sequence[Tensor], theta: Tensor,
                  relu: Optional[Sequence[bool]] = None, *, one_dtype: bool = False) -> None:
    """Raise ValueError/TypeError naming the offending input of ``combine``. Branches of
    different floating dtypes pass (``plinio.ops.combine`` promotes them) unless
    `one_dtype`, as for the op itself."""
    if isinstance(branches, Tensor) or not isinstance(branches, (list, tuple)):
        raise TypeError("plinio.ops.combine: `branches` must be a list or tuple of tensors, "
                        f"got {type(branches).__name__}")
    if len(branches) == 0:
        raise ValueError("plinio.ops.combine: `branches` is empty; give at least one tensor")
    if not isinstance(theta, Tensor):
        raise TypeError(f"plinio.ops.combine: `theta` must be a tensor, got {type(theta).__name__}")
    ref = branches[0]
    for i, b in enumerate(branches):
        if not isinstance(b, Tensor):
            raise TypeError(f"plinio.ops.combine: branch {i} is a {type(b).__name__}, not a tensor")
        if b.shape != ref.shape:
            raise ValueError(f"plinio.ops.combine: branch {i} has shape {tuple(b.shape)} but "
                             f"branch 0 has shape {tuple(ref.shape)}; all branches must match")
        if not b.dtype.is_floating_point:
            raise ValueError(f"plinio.ops.combine: branch {i} has dtype {b.dtype}; branches "
                             "must be floating point")
        if one_dtype and b.dtype != ref.dtype:
            raise ValueError(f"plinio::combine: branch {i} has dtype {b.dtype} but branch 0 "
                             f"has dtype {ref.dtype}; the op takes one dtype (plinio.ops.combine "
                             "promotes them)")
        if b.device != ref.device:
            raise ValueError(f"plinio.ops.combine: branch {i} is on {b.device} but branch 0 is "
                             f"on {ref.device}; move all branches to one device")
    if theta.dim() != 1 or theta.shape[0] != len(branches):
        raise ValueError(f"plinio.ops.combine: theta must be a vector of {len(branches)} weights "
                         f"(one per branch), got shape {tuple(theta.shape)}")
    if not theta.dtype.is_floating_point:
        raise ValueError(f"plinio.ops.combine: theta must be floating point, got {theta.dtype}")
    if theta.device != ref.device:
        raise ValueError(f"plinio.ops.combine: theta is on {theta.device} but the branches are "
                         f"on {ref.device}")
    if relu is not None and len(relu) not in (0, len(branches)):
        raise ValueError(f"plinio.ops.combine: relu must hold one flag per branch "
                         f"({len(branches)}), got {len(relu)} flags")


def check_mask_params(
    where: str,
    alpha: Optional[Tensor],
    beta: Optional[Tensor],
    gamma: Optional[Tensor],
    cout: Optional[int],
    kernel_size: Optional[int],
    keep_alive: int,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
) -> None:
    """Check the PIT mask parameters against the layer geometry (Cout, K)."""
    params = {"alpha": alpha, "beta": beta, "gamma": gamma}
    for name, p in params.items():
        if p is None:
            continue
        if not isinstance(p, Tensor):
            raise TypeError(f"{where}: `{name}` must be a tensor or None, got {type(p).__name__}")
        if p.dim() != 1:
            raise ValueError(f"{where}: `{name}` must be a vector, got shape {tuple(p.shape)}")
        if not p.dtype.is_floating_point:
            raise ValueError(f"{where}: `{name}` must be floating point, got {p.dtype}")
        if dtype is not None and p.dtype != dtype:
            raise ValueError(f"{where}: `{name}` has dtype {p.dtype} but the weight has {dtype}; "
                             "keep mask parameters in the weight's dtype")
        if device is not None and p.device != device:
            raise ValueError(f"{where}: `{name}` is on {p.device} but the weight is on {device}")
    present = [p for p in params.values() if p is not None]
    for p in present[1:]:
        if p.dtype != present[0].dtype or p.device != present[0].device:
            raise ValueError(f"{where}: alpha/beta/gamma must share one dtype and device")
    if not isinstance(keep_alive, int) or isinstance(keep_alive, bool) or keep_alive < 0:
        raise ValueError(f"{where}: keep_alive must be an int >= 0, got {keep_alive!r}")
    if alpha is not None:
        if cout is not None and alpha.shape[0] != cout:
            raise ValueError(f"{where}: alpha has {alpha.shape[0]} entries but the layer has "
                             f"{cout} output channels")
        if keep_alive > alpha.shape[0]:
            raise ValueError(f"{where}: keep_alive={keep_alive} exceeds the {alpha.shape[0]} "
                             "channels of alpha")
    if beta is not None and kernel_size is not None and beta.shape[0] != kernel_size:
        raise ValueError(f"{where}: beta has {beta.shape[0]} entries but the kernel size is "
                         f"{kernel_size}")
    if gamma is not None:
        if kernel_size is None:
            raise ValueError(f"{where}: give kernel_size (or beta) together with gamma")
        levels = dilation_levels(kernel_size)
        if gamma.shape[0] != levels:
            raise ValueError(f"{where}: gamma must have {levels} entries for kernel size "
                             f"{kernel_size} (max(ceil(log2 K), 1)), got {gamma.shape[0]}")


def check_masked_weight(
    weight: Tensor,
    bias: Optional[Tensor],
    alpha: Optional[Tensor],
    beta: Optional[Tensor],
    gamma: Optional[Tensor],
    keep_alive: int,
    *,
    params_in_weight_dtype: bool = False,
) -> None:
    """Check a layer weight (Linear 2-D, Conv1d 3-D, Conv2d 4-D), its bias and masks. The
    mask parameters may have another dtype than the weight (``plinio.ops.pit_masked_weight``
    converts) unless `params_in_weight_dtype`, as for the op itself."""
    where = "plinio.ops.pit_masked_weight"
    if not isinstance(weight, Tensor):
        raise TypeError(f"{where}: `weight` must be a tensor, got {type(weight).__name__}")
    if weight.dim() not in (2, 3, 4):
        raise ValueError(f"{where}: weight must be 2-D (Linear), 3-D (Conv1d) or 4-D (Conv2d), "
                         f"got shape {tuple(weight.shape)}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"{where}: weight must be floating point, got {weight.dtype}")
    if (beta is not None or gamma is not None) and weight.dim() != 3:
        raise ValueError(f"{where}: beta/gamma (receptive-field and dilation masks) apply to "
                         f"Conv1d weights (3-D) only, got a weight of shape {tuple(weight.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"{where}: `bias` must be a tensor or None")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{where}: bias must have shape ({weight.shape[0]},), got "
                             f"{tuple(bias.shape)}")
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise ValueError(f"{where}: bias must have the weight's dtype and device")
    check_mask_params(where, alpha, beta, gamma, weight.shape[0], weight.shape[-1], keep_alive,
                      dtype=weight.dtype if params_in_weight_dtype else None,
                      device=weight.device)
