"""Which graph ops run unchanged on compact tensors (compact execution,
``plinio.fast.sparse_step``): tensors that hold only the kept channels of their group.

Such an op must be channel-local (channel c of the output depends on channel c of the
inputs only, or the op concatenates / flattens channels as the channel analysis describes),
work for any channel count (no hard-coded sizes, no parameter per channel) and draw no
random numbers (a draw on fewer channels would differ from the dense path's). The channel
analysis already checked that it maps 0 to 0 where it keeps a group; this table only says
that running it on the kept channels alone gives the kept channels of the full result.
Dropout is run by ``plinio.fast.compact_dropout`` instead; anything else (views with sizes,
``size()`` reads, per-channel parameters, random ops) keeps its groups at full width.
"""
import operator
from typing import Any, Callable, Dict, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from plinio.graph.channels import Flatten

COMPACT_MODULES = frozenset({
    nn.Identity, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Threshold, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU,
    nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh, nn.Hardshrink, nn.Softshrink, nn.Softsign,
    nn.Tanhshrink, nn.PReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.Flatten,
})
COMPACT_FUNCTIONS = frozenset({
    torch.relu, torch.relu_, F.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.hardtanh, F.hardswish,
    torch.tanh, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.pad,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub,
    torch.mul, torch.div, torch.neg, torch.flatten, torch.mean, torch.sum, torch.amax,
})
COMPACT_METHODS = frozenset({
    "relu", "relu_", "tanh", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "neg", "flatten",
    "contiguous", "clone", "mean", "sum", "amax",
})
CONCATENATIONS = frozenset({torch.cat, torch.concat, torch.concatenate})
FLATTENS = frozenset({nn.Flatten, torch.flatten, "flatten"})


def _concat_dim(node: fx.Node) -> Any:
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)


def runs_compact(node: fx.Node, modules: Dict[str, nn.Module], desc_of: Callable[[Any], Optional[Any]]) -> bool:
    """Whether ``node`` computes the kept channels of its result from the kept channels of
    its inputs unchanged. ``desc_of``: the channel descriptor of a node argument (None: no
    channel dimension). Besides the table, every tensor input must carry the output's
    descriptor (one compact layout in, the same out), except the parts of a channel
    concatenation (on dim 1) and the input of a flatten (its ``Flatten``)."""
    if node.op == "call_module":
        kind: Any = type(modules[node.target])
        known = kind in COMPACT_MODULES
    elif node.op == "call_function":
        kind = node.target
        if kind in CONCATENATIONS and _concat_dim(node) == 1:
            return True  # the held channels of the parts, in order: those of the Concat
        known = kind in COMPACT_FUNCTIONS
    elif node.op == "call_method":
        kind = node.target
        known = kind in COMPACT_METHODS
    else:
        return False
    if not known:
        return False
    out = desc_of(node)
    inputs = [desc_of(a) for a in node.all_input_nodes if desc_of(a) is not None]
    if kind in FLATTENS and len(inputs) == 1 and isinstance(out, Flatten) and out.inner == inputs[0]:
        return True
    return all(d == out for d in inputs)
