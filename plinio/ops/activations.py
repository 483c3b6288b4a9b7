"""The CPU implementations of :func:`plinio.ops.relu` and :func:`plinio.ops.dropout`: ReLU /
ReLU6 and training-mode dropout for graphs that torch.compile lowers on the CPU.

Inductor's CPU code writes and reads bool tensors slowly, and a compiled graph makes two of
them: a ReLU's backward ``grad · 1[y > 0]`` becomes a bool mask computed in the forward and
saved, and a dropout draws its mask with inductor's own random numbers, stored as bools. These
versions compute the same values and gradients without either:

- :func:`relu_saving_output`: the forward is the plain ``relu`` / ``hardtanh`` (inductor fuses
  it into its neighbours); the backward is one op, ``plinio::relu_backward(grad, y)``, which
  reads the float output y that autograd saves anyway and is PyTorch's own formula fed with y.
- :func:`dropout_from_noise`: the noise comes from ``plinio::dropout_noise``, aten's CPU kernel
  drawing from the default generator exactly as eager dropout does, and multiplies the input
  in the graph, where the backward ``grad · noise`` is a float product too.
"""
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


class _ReLUSavingOutput(torch.autograd.Function):
    """clamp(x, 0, upper) with the backward of plinio::relu_backward on the saved output."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, upper: Optional[float]) -> Tensor:
        out = torch.relu(x) if upper is None else F.hardtanh(x, 0.0, upper)
        ctx.save_for_backward(out)
        ctx.upper = upper
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None]:
        out, = ctx.saved_tensors
        return torch.ops.plinio.relu_backward(grad, out, ctx.upper), None


def relu_saving_output(x: Tensor, upper: Optional[float]) -> Tensor:
    """``torch.relu(x)`` (``upper`` None) or ``F.hardtanh(x, 0, upper)``, its backward one
    ``plinio::relu_backward`` call on the output (CPU tensors, compiled library loaded)."""
    return _ReLUSavingOutput.apply(x, upper)


def dropout_from_noise(x: Tensor, p: float) -> Tensor:
    """Training-mode dropout, 0 < p < 1: ``x · plinio::dropout_noise(x, p)`` (CPU tensors,
    compiled library loaded)."""
    return x * torch.ops.plinio.dropout_noise(x, p)
