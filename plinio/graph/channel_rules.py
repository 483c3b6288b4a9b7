"""Per-op channel rules of the mask-sharing analysis (docs/behaviour.md §5.2).

Each graph node that reads a tracked tensor is handled by one rule, looked up by module type
(``MODULE_RULES``), function (``FUNCTION_RULES``) or method name (``METHOD_RULES``). Adding an
op is one line in a table. A rule receives the analysis context and the node and returns the
descriptor of the node's output (None for non-tensor values):

- ``propagate``: shape-preserving per-channel op that maps zero to zero (pruned channels stay 0);
- ``merge``: operands share one mask (add, sub, elementwise products, supernet combiner);
- ``concat``: ``torch.cat`` (channels: concatenation; other dims: merge);
- ``flatten`` / ``view_or_reshape`` / ``reduce``: inspect dims and shapes;
- ``freeze``: any other known op; the input masks are frozen and the output width is constant;
- ``no_channels``: the output is not a tensor with channels (``x.size()``, ``x.dim()``).
"""
import operator
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from plinio.graph.channels import Concat, Desc, Flatten, merge

if TYPE_CHECKING:
    from plinio.graph.analysis import ChannelAnalysis

Rule = Callable[["ChannelAnalysis", fx.Node], Optional[Desc]]


def _first(node: fx.Node) -> Any:
    return node.args[0] if node.args else next(iter(node.kwargs.values()))


def call_arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` of a call node, or its keyword ``name``, or ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def propagate(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """Output channels are the input's channels, zero stays zero."""
    desc = ctx.desc(_first(node))
    out = ctx.shape(node)
    inp = ctx.shape(_first(node))
    if desc is None or out is None or len(out) < 2:
        return ctx.freeze_inputs(node)
    if inp is not None and len(inp) >= 2 and inp[1] != out[1]:
        return ctx.freeze_inputs(node)
    return desc


def freeze_rule(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """Known op that mixes or rescales channels unevenly: the inputs keep every channel."""
    return ctx.freeze_inputs(node)


def no_channels(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """The result is metadata (sizes, ndim): no channel semantics, nothing frozen."""
    return None


def merge_rule(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """Tensor operands share one channel mask; a scalar or untracked operand freezes."""
    operands = ctx.flat_args(node)
    descs = [ctx.desc(a) for a in operands if isinstance(a, fx.Node)]
    scalars = [a for a in operands if not isinstance(a, fx.Node)]
    if scalars or any(d is None for d in descs) or not descs:
        return ctx.freeze_inputs(node)
    out = descs[0]
    for d in descs[1:]:
        out = merge(out, d, ctx.groups)
    return ctx.checked(node, out)


def scale_rule(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """``x * s``, ``x / s``: a Python-scalar factor keeps zeros; tensor factors merge
    (for a product, zero in either operand is zero in the result)."""
    a, b = node.args[0], node.args[1] if len(node.args) > 1 else None
    divide = node.target in (operator.truediv, torch.div, "div")
    if isinstance(a, fx.Node) and not isinstance(b, fx.Node) and isinstance(b, (int, float)) and b != 0:
        return propagate(ctx, node)
    if not divide and isinstance(b, fx.Node) and isinstance(a, (int, float)):
        return ctx.checked(node, ctx.desc(b)) if ctx.desc(b) is not None else ctx.freeze_inputs(node)
    if divide:
        return ctx.freeze_inputs(node)
    return merge_rule(ctx, node)


def concat(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """``torch.cat``: on dim 1 the masks are concatenated, on other dims they are shared."""
    tensors = _first(node)
    dim = call_arg(node, 1, "dim", 0)
    out = ctx.shape(node)
    if out is None or len(out) < 2 or not isinstance(dim, int):
        return ctx.freeze_inputs(node)
    dim = dim % len(out)
    descs = [ctx.desc(t) for t in tensors]
    if any(d is None for d in descs):
        return ctx.freeze_inputs(node)
    if dim == 0:
        return ctx.freeze_inputs(node)
    if dim == 1:
        return Concat(tuple(descs))
    result = descs[0]
    for d in descs[1:]:
        result = merge(result, d, ctx.groups)
    return result


def _flatten_from(ctx: "ChannelAnalysis", node: fx.Node, start: int, end: int) -> Optional[Desc]:
    inp = ctx.shape(_first(node))
    desc = ctx.desc(_first(node))
    if inp is None or desc is None or len(inp) < 2:
        return ctx.freeze_inputs(node)
    ndim = len(inp)
    start, end = start % ndim, end % ndim
    if start >= 2 or start >= end:
        return propagate(ctx, node)
    if start == 1 and end == ndim - 1:
        factor = 1
        for s in inp[2:]:
            factor *= s
        return desc if factor == 1 else Flatten(desc, factor)
    return ctx.freeze_inputs(node)


def flatten_fn(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """``torch.flatten(x, start_dim, end_dim)`` / ``x.flatten(...)``."""
    return _flatten_from(ctx, node, call_arg(node, 1, "start_dim", 0), call_arg(node, 2, "end_dim", -1))


def flatten_module(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """``nn.Flatten(start_dim, end_dim)``."""
    mod = ctx.module(node)
    return _flatten_from(ctx, node, mod.start_dim, mod.end_dim)


def view_or_reshape(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """``x.view/reshape``: a flatten from dim 1 (rewritten to ``torch.flatten`` at conversion),
    an identity, or a reshape of the spatial dims only; anything else freezes."""
    inp, out = ctx.shape(_first(node)), ctx.shape(node)
    if inp is None or out is None or len(inp) < 2:
        return ctx.freeze_inputs(node)
    if len(out) == 2 and out[0] == inp[0] and len(inp) > 2:
        ctx.flatten_views.append(node)
        return _flatten_from(ctx, node, 1, -1)
    if out == inp:
        return ctx.desc(_first(node))
    if len(out) >= 2 and out[:2] == inp[:2]:
        return ctx.desc(_first(node))
    return ctx.freeze_inputs(node)


def reduce(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """``mean``/``sum``/``amax`` over spatial dims keeps the channel dim; otherwise freezes."""
    inp = ctx.shape(_first(node))
    dims = call_arg(node, 1, "dim", None)
    if inp is None or dims is None:
        return ctx.freeze_inputs(node)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        return ctx.freeze_inputs(node)
    dims = [d % len(inp) for d in dims]
    if 0 in dims or 1 in dims:
        return ctx.freeze_inputs(node)
    return propagate(ctx, node)


def pad_fn(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """``F.pad``: constant zero padding of non-channel dims propagates."""
    pad = call_arg(node, 1, "pad", ())
    mode = call_arg(node, 2, "mode", "constant")
    value = call_arg(node, 3, "value", None)
    inp = ctx.shape(_first(node))
    if inp is None or len(pad) > 2 * (len(inp) - 2) or (mode == "constant" and value not in (None, 0, 0.0)):
        return ctx.freeze_inputs(node)
    return propagate(ctx, node)


def combiner(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """A ``plinio_merges_inputs`` leaf (supernet combiner): an n-ary add of its list argument."""
    return merge_rule(ctx, node)


def getitem(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
    """Indexing a tracked tensor freezes it (channel selection is not analysed)."""
    return ctx.freeze_inputs(node)


def _when(check: Callable[[nn.Module], bool]) -> Rule:
    """Module rule: propagate when ``check(module)`` holds (zero maps to zero), else freeze."""
    def rule(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
        return propagate(ctx, node) if check(ctx.module(node)) else ctx.freeze_inputs(node)
    rule.__doc__ = f"propagate when {check.__doc__ or 'the module maps 0 to 0'}, else freeze"
    return rule


def is_number(value: Any) -> bool:
    """A constant int or float argument (not a bool, not a graph node)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _when_args(check: Callable[[fx.Node], bool]) -> Rule:
    """Function / method rule: propagate when ``check(node)`` holds for the call's constant
    arguments (zero maps to zero), else freeze."""
    def rule(ctx: "ChannelAnalysis", node: fx.Node) -> Optional[Desc]:
        return propagate(ctx, node) if check(node) else ctx.freeze_inputs(node)
    rule.__doc__ = f"propagate when {check.__doc__}, else freeze"
    return rule


def _hardtanh_args_zero(node: fx.Node) -> bool:
    """min_val <= 0 <= max_val"""
    low, high = call_arg(node, 1, "min_val", -1.0), call_arg(node, 2, "max_val", 1.0)
    return is_number(low) and is_number(high) and low <= 0 <= high


def _clamp_args_zero(node: fx.Node) -> bool:
    """min <= 0 <= max (either may be None)"""
    low, high = call_arg(node, 1, "min", None), call_arg(node, 2, "max", None)
    return (low is None or is_number(low) and low <= 0) and (high is None or is_number(high) and high >= 0)


def _threshold_args_zero(node: fx.Node) -> bool:
    """0 is kept (threshold < 0) or replaced by a value of 0"""
    threshold, value = call_arg(node, 1, "threshold", None), call_arg(node, 2, "value", None)
    return is_number(threshold) and is_number(value) and (threshold < 0 or value == 0)


def _power_args_zero(node: fx.Node) -> bool:
    """the exponent is a number >= 1 (0 ** p = 0 with a finite derivative)"""
    exponent = call_arg(node, 1, "exponent", None)
    return is_number(exponent) and exponent >= 1


def _instance_norm_args_zero(node: fx.Node) -> bool:
    """no running statistics, weight or bias (each channel normalized by its own statistics)"""
    return all(call_arg(node, i, name, None) is None
               for i, name in enumerate(("running_mean", "running_var", "weight", "bias"), start=1))


def _hardtanh_zero(m: nn.Module) -> bool:
    """min_val <= 0 <= max_val"""
    return m.min_val <= 0 <= m.max_val


def _threshold_zero(m: nn.Module) -> bool:
    """0 is kept or replaced by 0"""
    return m.threshold < 0 or m.value == 0


def _single_prelu(m: nn.Module) -> bool:
    """the slope is shared by all channels"""
    return m.num_parameters == 1


def _zero_pad(m: nn.Module) -> bool:
    """the pad value is 0"""
    return getattr(m, "value", 0) == 0


_PROPAGATE_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d,
    # activations with f(0) = 0
    nn.ReLU, nn.RReLU, nn.ReLU6, nn.Tanh, nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.Hardshrink, nn.LeakyReLU, nn.Softshrink, nn.Softsign, nn.Tanhshrink,
)

# Layers with per-channel parameters that are not converted, activations with f(0) != 0,
# normalisations over channels, softmax over channels; alpha dropouts, which in training map
# 0 to a nonzero value (the affine correction that keeps the mean and variance).
_FREEZE_MODULES = (
    nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear, nn.Bilinear,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.LocalResponseNorm, nn.Sigmoid, nn.Hardsigmoid, nn.LogSigmoid, nn.Softplus, nn.GLU,
    nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle,
)

MODULE_RULES: Dict[type, Rule] = {
    **{cls: propagate for cls in _PROPAGATE_MODULES},
    **{cls: freeze_rule for cls in _FREEZE_MODULES},
    nn.Hardtanh: _when(_hardtanh_zero),
    nn.Threshold: _when(_threshold_zero),
    nn.PReLU: _when(_single_prelu),
    nn.ConstantPad1d: _when(_zero_pad),
    nn.ConstantPad2d: _when(_zero_pad),
    nn.ConstantPad3d: _when(_zero_pad),
    nn.Flatten: flatten_module,
}

_PROPAGATE_FUNCTIONS = (
    torch.relu, torch.relu_, F.relu, F.relu6, F.leaky_relu, F.elu, F.celu, F.selu, F.gelu, F.silu, F.mish,
    F.hardswish, F.tanhshrink, F.softsign, torch.abs, F.hardshrink, F.softshrink, torch.tanh, F.tanh,
    F.dropout, F.dropout1d, F.dropout2d, torch.dropout, F.rrelu, torch.rrelu, torch.square,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate, torch.clone,
)
_FREEZE_FUNCTIONS = (
    torch.sigmoid, F.sigmoid, F.hardsigmoid, F.logsigmoid, F.softplus, torch.softmax, F.softmax,
    torch.log_softmax, F.log_softmax, F.softmin, F.layer_norm, F.group_norm, F.batch_norm, F.conv1d,
    F.conv2d, F.linear, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.matmul,
    operator.matmul, F.normalize, F.alpha_dropout, F.feature_alpha_dropout, F.local_response_norm, F.glu,
    F.pixel_shuffle, F.pixel_unshuffle, torch.exp,
)

FUNCTION_RULES: Dict[Any, Rule] = {
    **{fn: propagate for fn in _PROPAGATE_FUNCTIONS},
    **{fn: freeze_rule for fn in _FREEZE_FUNCTIONS},
    operator.add: merge_rule, operator.iadd: merge_rule, operator.sub: merge_rule, operator.isub: merge_rule,
    torch.add: merge_rule, torch.sub: merge_rule, torch.subtract: merge_rule,
    operator.mul: scale_rule, operator.imul: scale_rule, torch.mul: scale_rule, torch.multiply: scale_rule,
    operator.truediv: scale_rule, torch.div: scale_rule, operator.neg: propagate, torch.neg: propagate,
    torch.cat: concat, torch.concat: concat, torch.concatenate: concat,
    torch.flatten: flatten_fn, torch.mean: reduce, torch.sum: reduce, torch.amax: reduce,
    F.pad: pad_fn, operator.getitem: getitem, getattr: no_channels,
    F.hardtanh: _when_args(_hardtanh_args_zero), F.threshold: _when_args(_threshold_args_zero),
    torch.clamp: _when_args(_clamp_args_zero), torch.clip: _when_args(_clamp_args_zero),
    operator.pow: _when_args(_power_args_zero), torch.pow: _when_args(_power_args_zero),
    F.instance_norm: _when_args(_instance_norm_args_zero),
}

METHOD_RULES: Dict[str, Rule] = {
    **{name: propagate for name in ("relu", "relu_", "tanh", "contiguous", "clone", "float", "double", "half",
                                    "to", "type_as", "neg", "abs", "square")},
    **{name: freeze_rule for name in ("sigmoid", "softmax", "log_softmax", "exp", "permute", "transpose",
                                      "squeeze", "unsqueeze", "matmul", "expand", "repeat", "chunk", "split")},
    "add": merge_rule, "add_": merge_rule, "sub": merge_rule, "sub_": merge_rule,
    "mul": scale_rule, "mul_": scale_rule, "div": scale_rule,
    "view": view_or_reshape, "reshape": view_or_reshape, "flatten": flatten_fn,
    "mean": reduce, "sum": reduce, "amax": reduce,
    "size": no_channels, "dim": no_channels, "numel": no_channels,
    **{name: _when_args(_clamp_args_zero) for name in ("clamp", "clamp_", "clip", "clip_")},
    "pow": _when_args(_power_args_zero),
}


def module_rule(module: nn.Module) -> Optional[Rule]:
    """Rule of a leaf module (exact type first, then the combiner attribute)."""
    rule = MODULE_RULES.get(type(module))
    if rule is None and getattr(type(module), "plinio_merges_inputs", False):
        rule = combiner
    return rule


def flat_nodes(args: Sequence[Any]) -> List[fx.Node]:
    """Every fx.Node inside (nested) args."""
    out: List[fx.Node] = []
    fx.node.map_arg(tuple(args), out.append)
    return out

