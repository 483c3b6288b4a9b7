"""Straight-through binarizer used by every PIT mask."""
from typing import Any, Tuple, Union

import torch


class PITBinarizer(torch.autograd.Function):
    """bin(x) = 1[x > threshold] in the forward pass, identity gradient in the backward pass.

    The forward value is exactly 0.0 or 1.0 (in the dtype of ``x``), so multiplying a weight
    by it keeps kept values bit-identical.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor,
                threshold: Union[float, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad_output, None
