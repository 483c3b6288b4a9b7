"""Parameter and MAC counts of plain layers, measured by running the model once.

This is the counting rule of the static branch costs (docs/behaviour.md §4.2): a layer's
size is its own parameter count; one call of it costs that count times the number of output
positions for a convolution, and that count for any other layer (Linear, BatchNorm). The
supernet wrapper measures its branches with it and the demo its exported networks, so the
two sets of numbers are comparable.
"""
from typing import Any, Callable, Dict, Hashable, Mapping, TypeVar

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

Key = TypeVar("Key", bound=Hashable)


def direct_param_count(module: nn.Module) -> int:
    """Number of parameters the module holds itself (not those of its children)."""
    return sum(p.numel() for p in module.parameters(recurse=False))


def call_macs(module: nn.Module, output: Any) -> int:
    """MACs of one call of ``module`` that returned ``output`` (see the module docstring)."""
    count = direct_param_count(module)
    if isinstance(module, _ConvNd):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"static cost: convolution {type(module).__name__} returned a "
                            f"{type(output).__name__} instead of a tensor")
        for dim in output.shape[2:]:
            count *= int(dim)
    return count


def forward_macs(model: nn.Module, layers: Mapping[Key, nn.Module],
                 run_model: Callable[[], Any]) -> Dict[Key, int]:
    """MACs of each of ``layers`` (submodules of ``model``), summed over every call made while
    ``run_model()`` runs ``model``. The run is in eval mode without gradients; the training
    flags are restored afterwards."""
    macs: Dict[Key, int] = {key: 0 for key in layers}

    def counter(key: Key) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            macs[key] += call_macs(module, output)
        return hook

    handles = [layer.register_forward_hook(counter(key)) for key, layer in layers.items()]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            run_model()
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in flags:
            m.training = flag
    return macs
