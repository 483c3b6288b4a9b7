"""Recognise the zero-constant padding nodes of a traced graph.

Export rewrites such a node's padding for the pruned PITConv1d that consumes it, and the fast
path absorbs it into a convolution; both read the node through :func:`zero_padding`.
"""
from typing import Any, Callable, List, Optional, Tuple

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

_PAD_MODULES = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ZeroPad1d, nn.ZeroPad2d)


def zero_padding(node: fx.Node, module_at: Callable[[str], nn.Module]
                 ) -> Optional[Tuple[Any, List[int]]]:
    """(padded input, ``F.pad``-style spec, last dimension first) when ``node`` pads with
    zeros: a ``ConstantPad1d/2d(value=0)`` or ``ZeroPad1d/2d`` module (exact type) called on
    one input, or ``F.pad`` in constant mode with value 0 and int pads. None otherwise.

    ``module_at`` returns the module a ``call_module`` target names.
    """
    if node.op == "call_module":
        module = module_at(node.target)
        if type(module) not in _PAD_MODULES or float(module.value) != 0.0 or \
                len(node.args) != 1 or node.kwargs:
            return None
        return node.args[0], [int(p) for p in module.padding]
    if node.op == "call_function" and node.target is F.pad:
        args = dict(zip(("input", "pad", "mode", "value"), node.args), **node.kwargs)
        if args.get("mode", "constant") != "constant" or args.get("value") not in (None, 0, 0.0):
            return None
        pad = args.get("pad")
        if not isinstance(pad, (list, tuple)) or not all(isinstance(p, int) for p in pad):
            return None
        return args.get("input"), list(pad)
    return None
