"""The fast path's activations while torch.compile traces it: ReLU, ReLU6 and training-mode
dropout run through :func:`plinio.ops.relu` / :func:`plinio.ops.dropout`.

Inductor's CPU code stores and loads bool tensors slowly, and a compiled ReLU or dropout makes
one per call (the ReLU's backward mask, saved from the forward; the dropout mask, drawn with
inductor's own random numbers). The plinio versions keep the values and gradients and make
no bool tensor (plinio/ops/activations.py). Dropout then draws the very masks eager dropout
draws (eager's kernel and generator), so a compiled step equals an eager one bit for bit when
the graph draws no other random numbers (Gumbel sampling uses inductor's generator). Calls on
other devices are left as they are.

The wrappers enter :func:`compiled_activations` around the fast path's forward. While
torch.compile traces, it is a ``TorchFunctionMode`` that sees every ``F.relu`` /
``torch.relu`` / ``Tensor.relu`` (in place too), ``F.relu6`` and ``F.hardtanh(x, 0, upper)``
(``nn.ReLU6``), ``F.dropout`` and ``torch.dropout`` call, of the converted graph and of every
supernet branch the fast graph runs, without copying or rewriting either; in eager mode it does
nothing.
"""
import contextlib
from typing import Any, Callable, ContextManager, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from plinio import ops

_RELUS = (F.relu, torch.relu, Tensor.relu)
_RELUS_IN_PLACE = (torch.relu_, Tensor.relu_)


def _in_place(x: Tensor, out: Tensor, inplace: bool) -> Tensor:
    """``out``, written into ``x`` for an in-place call (same values, same autograd)."""
    return x.copy_(out) if inplace else out


def _relu(input: Tensor, inplace: bool = False) -> Tensor:
    return _in_place(input, ops.relu(input), inplace)


def _hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,
              inplace: bool = False) -> Optional[Tensor]:
    """clamp(x, 0, upper) (``nn.ReLU6`` calls it): None for another lower bound."""
    if min_val != 0.0 or not max_val > 0.0:
        return None
    return _in_place(input, ops.relu(input, upper=float(max_val)), inplace)


def _relu6(input: Tensor, inplace: bool = False) -> Optional[Tensor]:
    return _hardtanh(input, 0.0, 6.0, inplace)


def _dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
             ) -> Optional[Tensor]:
    """None where eager dropout returns its input untouched (evaluation, p = 0)."""
    if not training or p == 0.0:
        return None
    return _in_place(input, ops.dropout(input, p), inplace)


def _torch_dropout(input: Tensor, p: float, train: bool) -> Optional[Tensor]:
    """``torch.dropout``'s signature (``train`` has no default)."""
    return _dropout(input, p, train)


def _handler(func: Callable) -> Optional[Callable[..., Optional[Tensor]]]:
    if func in _RELUS:
        return _relu
    if func in _RELUS_IN_PLACE:
        return lambda input: _relu(input, inplace=True)
    if func is F.relu6:
        return _relu6
    if func is F.hardtanh:
        return _hardtanh
    if func is F.dropout:
        return _dropout
    if func is torch.dropout:
        return _torch_dropout
    return None


class _CompiledActivations(TorchFunctionMode):
    """Routes the activations named in the module docstring, on CPU tensors, to their plinio
    versions (a handler returning None leaves the call as it was)."""

    def __torch_function__(self, func: Callable, types: Sequence[type], args: Sequence[Any] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = kwargs or {}
        handler = _handler(func)
        on_cpu = len(args) > 0 and isinstance(args[0], Tensor) and args[0].device.type == "cpu"
        out = handler(*args, **kwargs) if handler is not None and on_cpu else None
        return out if out is not None else func(*args, **kwargs)


def compiled_activations(enabled: bool = True) -> ContextManager:
    """While torch.compile traces (and ``enabled``): the mode of the module docstring.
    Otherwise a context that does nothing."""
    if enabled and torch.compiler.is_compiling():
        return _CompiledActivations()
    return contextlib.nullcontext()
