"""Which branch layers are linear convolutions, and their geometry (proved from hyper-parameters).

A *linear op* here is a map ``y = conv(x, W, b)`` with zero padding. For each supported layer
(``nn.Conv1d``/``nn.Conv2d``, PIT conv layers, ``nn.Identity``) this module reads the
hyper-parameters into a :class:`ConvGeometry`, and composes chains of them where the
composition is provably one convolution:

* a conv followed by an unpadded, stride-1 1×1 conv (``B(A(x))`` is pointwise-linear in
  ``A``'s output, so the zero padding of ``A`` is unaffected);
* an unpadded, stride-1, bias-free 1×1 conv followed by any conv (the zero padding of the
  second conv then equals the 1×1 conv of zero padding);
* never two padded k×k convs: the inner zero padding is not the composite's zero padding at
  the borders.
"""
import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autocast import autocast_off
from .padded_conv import pad_spec, zero_padded_conv

Ints = Tuple[int, ...]


@dataclass(frozen=True)
class ConvGeometry:
    """Hyper-parameters of a zero-padded convolution, with explicit (left, right) padding."""

    ndim: int
    in_channels: int
    out_channels: int
    groups: int
    kernel: Ints
    stride: Ints
    dilation: Ints
    pad_left: Ints
    pad_right: Ints
    has_bias: bool

    @property
    def extent(self) -> Ints:
        """Span of the kernel on the input, dilation included: d·(k−1)+1."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))

    @property
    def size_offset(self) -> Ints:
        """``p_l + p_r − extent``: the output length is ⌊(L + offset)/s⌋ + 1 for every L."""
        return tuple(pl + pr - e for pl, pr, e in zip(self.pad_left, self.pad_right, self.extent))

    @property
    def is_unpadded_pointwise(self) -> bool:
        """1×1, stride 1, no padding: a per-position linear map of the channels."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride) \
            and all(p == 0 for p in self.pad_left + self.pad_right)

    def macs_per_output_position(self) -> int:
        """Multiply-accumulates per output position (all output channels)."""
        return self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel)


def identity_geometry(ndim: int, channels: int, groups: int) -> ConvGeometry:
    """An identity map seen as a 1×1 (grouped) convolution with a Dirac kernel."""
    ones = (1,) * ndim
    zeros = (0,) * ndim
    return ConvGeometry(ndim, channels, channels, groups, ones, ones, ones, zeros, zeros, False)


def _explicit_padding(padding: Union[str, Sequence[int], int], kernel: Ints,
                      dilation: Ints) -> Tuple[Ints, Ints]:
    """(left, right) zero padding per dim, resolving 'same' / 'valid' as ``nn.ConvNd`` does."""
    if padding == "valid":
        return (0,) * len(kernel), (0,) * len(kernel)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple(t // 2 for t in totals), tuple(t - t // 2 for t in totals)
    if isinstance(padding, int):
        padding = (padding,) * len(kernel)
    pads = tuple(int(p) for p in padding)
    return pads, pads


def conv_geometry(module: nn.Module) -> Tuple[Optional[ConvGeometry], str]:
    """Geometry of a plain or PIT conv layer, or ``(None, reason)`` when it is not a plain
    zero-padded convolution of its input."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if type(module) not in (nn.Conv1d, nn.Conv2d):
            return None, f"{type(module).__name__} subclasses a conv and may override forward"
    elif not callable(getattr(module, "masked_weight_and_bias", None)):
        return None, f"{type(module).__name__} is not a convolution"
    needed = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
              "groups", "padding_mode", "weight")
    missing = [a for a in needed if not hasattr(module, a)]
    if missing:
        return None, f"{type(module).__name__} lacks conv hyper-parameters {missing}"
    kernel = tuple(int(k) for k in module.kernel_size)
    if len(kernel) not in (1, 2) or module.weight.dim() != len(kernel) + 2:
        return None, f"{type(module).__name__} is not a 1-D or 2-D convolution"
    if module.padding_mode != "zeros":
        return None, f"padding_mode={module.padding_mode!r} is not zero padding"
    dilation = tuple(int(d) for d in module.dilation)
    pad_left, pad_right = _explicit_padding(module.padding, kernel, dilation)
    geometry = ConvGeometry(
        ndim=len(kernel), in_channels=int(module.in_channels),
        out_channels=int(module.out_channels), groups=int(module.groups), kernel=kernel,
        stride=tuple(int(s) for s in module.stride), dilation=dilation, pad_left=pad_left,
        pad_right=pad_right, has_bias=getattr(module, "bias", None) is not None)
    return geometry, ""


def compose(first: ConvGeometry, second: ConvGeometry) -> Tuple[Optional[ConvGeometry], str]:
    """Geometry of ``second(first(x))`` when it is exactly one convolution of ``x``."""
    if first.ndim != second.ndim:
        return None, "layers of different dimensionality"
    if first.out_channels != second.in_channels:
        return None, "channel counts do not chain"
    groups = first.groups if first.groups == second.groups else 1
    if second.is_unpadded_pointwise:
        return replace(first, out_channels=second.out_channels, groups=groups,
                       has_bias=first.has_bias or second.has_bias), ""
    if first.is_unpadded_pointwise and not first.has_bias:
        return replace(second, in_channels=first.in_channels, groups=groups), ""
    return None, ("two convolutions with padding or kernels larger than 1 do not compose into "
                  "one convolution (the inner zero padding differs at the borders)")


# ---------------------------------------------------------------- run-time weights
def dense_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Block-diagonal ``groups=1`` form of a grouped conv weight (exact, differentiable)."""
    if groups == 1:
        return weight
    cout, cin_g = weight.shape[0], weight.shape[1]
    kernel = weight.shape[2:]
    blocks = weight.reshape((groups, cout // groups, cin_g) + tuple(kernel))
    eye = torch.eye(groups, dtype=weight.dtype, device=weight.device)
    dense = torch.einsum("gh,goi...->gohi...", eye, blocks)
    return dense.reshape((cout, groups * cin_g) + tuple(kernel))


def compose_weights(first: Tuple[torch.Tensor, Optional[torch.Tensor], ConvGeometry],
                    second: Tuple[torch.Tensor, Optional[torch.Tensor], ConvGeometry],
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Weight and bias of ``second(first(x))`` for geometries accepted by :func:`compose`."""
    w1, b1, g1 = first
    w2, b2, g2 = second
    groups = g1.groups if g1.groups == g2.groups else 1
    if g1.groups != groups:
        w1 = dense_weight(w1, g1.groups)
    if g2.groups != groups:
        w2 = dense_weight(w2, g2.groups)
    if g2.is_unpadded_pointwise:
        mat = w2.reshape(groups, w2.shape[0] // groups, w2.shape[1])          # [G, o, m]
        ker = w1.reshape((groups, w1.shape[0] // groups) + tuple(w1.shape[1:]))  # [G, m, i, k..]
        weight = torch.einsum("gom,gmi...->goi...", mat, ker).reshape(
            (w2.shape[0],) + tuple(w1.shape[1:]))
        bias = b2
        if b1 is not None:
            mapped = torch.einsum("gom,gm->go", mat, b1.reshape(groups, -1)).reshape(-1)
            bias = mapped if bias is None else mapped + bias
        return weight, bias
    # first is an unpadded, bias-free pointwise conv
    mat = w1.reshape(groups, w1.shape[0] // groups, w1.shape[1])                 # [G, m, i]
    ker = w2.reshape((groups, w2.shape[0] // groups) + tuple(w2.shape[1:]))    # [G, o, m, k..]
    weight = torch.einsum("gom...,gmi->goi...", ker, mat).reshape(
        (w2.shape[0], w1.shape[1]) + tuple(w2.shape[2:]))
    return weight, b2


def layer_weight_and_bias(module: nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """What the layer convolves with: PIT layers' masked weights, plain convs' parameters."""
    getter = getattr(module, "masked_weight_and_bias", None)
    if callable(getter):
        return getter()
    return module.weight, module.bias


def reference_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   geometry: ConvGeometry) -> torch.Tensor:
    """Zero-padded convolution with explicit (possibly asymmetric or negative) padding."""
    if min(geometry.pad_left + geometry.pad_right) >= 0:
        return zero_padded_conv(x, weight, bias, geometry.pad_left, geometry.pad_right,
                                geometry.stride, geometry.dilation, geometry.groups)
    conv = F.conv1d if geometry.ndim == 1 else F.conv2d
    pads = pad_spec(geometry.pad_left, geometry.pad_right)  # negative padding crops
    return conv(F.pad(x, pads), weight, bias, geometry.stride, 0, geometry.dilation,
                geometry.groups)


def trusted_conv_forward(module: nn.Module) -> bool:
    """Layers whose forward is known to be ``conv(x, *layer_weight_and_bias(m), hyper-parameters)``:
    plain torch convs and classes that declare ``plinio_conv_forward = True`` in their own body
    (the PIT convs; internal contract, covered by the equivalence tests). The attribute is not
    inherited: a subclass may override forward, so it is probed instead."""
    cls = type(module)
    return cls in (nn.Conv1d, nn.Conv2d) or vars(cls).get("plinio_conv_forward", False) is True


def conv_matches_geometry(module: nn.Module, geometry: ConvGeometry) -> bool:
    """The layer computes ``conv(x, *weights, geometry)`` on a small random probe (guards
    against layers whose forward does more than their hyper-parameters say)."""
    weight, _ = layer_weight_and_bias(module)
    size = [e + 2 * s + 1 for e, s in zip(geometry.extent, geometry.stride)]
    generator = torch.Generator().manual_seed(0)  # never touches the global RNG
    probe = torch.randn([1, geometry.in_channels] + size, generator=generator,
                        dtype=torch.float64).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad(), autocast_off(probe.device):  # compare in the layer's own precision
        try:
            got = module(probe)
        except Exception:  # the layer cannot even run on the probe: do not merge it
            return False
        expected = reference_conv(probe, *layer_weight_and_bias(module), geometry)
    if got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    return bool(torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))

