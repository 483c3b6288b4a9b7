"""Exact sparse execution of a PIT layer's masked channels (an exact fast path in the sense
of docs/design.md §3: the same values and gradients as the dense layer).

A PIT conv / linear layer computes ``y = conv(x, W', b')`` with ``W' = W ⊙ m_out ⊙ t`` and
``b' = b ⊙ m_out`` (``plinio.ops.pit_masked_weight``). The binarized masks are exact 0./1. in
every mode, so with K the kept output channels, P the pruned ones and L the *live* input
channels (the others are exactly 0 because their producer's mask is 0 and every op in between
maps 0 to 0):

* forward: ``y[:, P]`` is exactly 0 and ``y[:, K]`` only reads ``x[:, L]``: one convolution of
  |K|×|L| channels instead of Cout×Cin, scattered into a zero tensor;
* input gradient: rows P of W' are 0, so ``gx = conv_input_grad(gy[:, K], W'[K])``;
* weight gradient: ``gW'[:, dead] = corr(x_dead, gy) = 0``, so only columns L are computed.

Two parts of the dense gradient are observable only through the straight-through mask
gradients, and each has a flag:

* ``grad_pruned_rows``: ``gW'[P] = corr(x, gy[:, P])`` and ``gb'[P] = Σ gy[:, P]`` reach
  nothing but α_P's straight-through gradient (``W`` gets ``gW' ⊙ m_out ⊙ t``, which is 0 on
  rows P, and β/γ get ``Σ_c m_c ⋯``, which skips rows P). When ``gy[:, P]`` is exactly 0 —
  e.g. the channel next passes a ReLU or ReLU6, whose backward is 0 at an input of exactly 0 —
  the dense ``gW'[P]`` and ``gb'[P]`` are exactly 0, so returning zeros without computing
  them is exact for every parameter. Otherwise pass True: they cost one weight-gradient
  convolution of Cout×|L| channels (a third of a dense step of the layer, at most).
* ``grad_dead_inputs``: ``gx[:, dead] = conv_input_grad(gy[:, K], W'[K][:, dead])`` is in
  general not 0, but it flows only back towards the producer of those channels, whose output
  there is 0 because its mask is 0. When every path back to that producer passes an op whose
  backward is 0 at an input of exactly 0 (ReLU, ReLU6), everything behind that op (the
  producer's weights, bias, input and mask parameters, and any op in between) receives
  exactly 0 from it either way, so returning zeros is exact for every parameter. Otherwise
  pass True: ``gx`` is then computed for every input channel (from rows K).

Whether an activation's backward is 0 at an input of exactly 0 is PyTorch's formula, checked
by experiment in the tests: ReLU and ReLU6 are (threshold_backward / hardtanh_backward give
0 there); LeakyReLU, GELU, SiLU, ELU and Hardtanh(-1, 1) are not.

Depthwise convolutions (groups = in = out): K indexes inputs and outputs, ``gx`` is exactly 0
outside K (``W'[P] = 0``) whatever the flags, and ``gW'`` is exactly 0 on rows with a dead
input; with ``grad_pruned_rows`` the weight gradient is computed for the rows of L.

What it costs beyond the compact convolutions, in memory traffic: the gather of the live
input (|L|/Cin of x; it is also what is saved for backward, so saved bytes shrink with |L|),
the scatter of the output (a zero-filled full-size tensor plus a copy of its K rows: about
1 + |K|/Cout output-sized writes), the gather of ``gy[:, K]``, and the same zero fill and copy
for ``gx``. Gathers and scatters are skipped when a set is complete. Plus about 30 µs of
Python and autograd per call on CPU. For a k×k conv these are small next to the saved
multiply-accumulates; for depthwise and 1×1 convs they are not (see :func:`sparse_pays`).

A compact layer (input and output both compact, the case of most layers in a pruned step)
runs in one native op instead, ``plinio::compact_conv`` (csrc/compact_conv.cpp, its autograd
in csrc/autograd.cpp): the same gathers, convolutions and scatters, with no Python between
them (25–75 µs less per layer at batch 1 on a 2-core CPU, a few percent of a pruned search
step: bench/step_ab.py); the Python autograd function stays as the fallback where the
extension is not built, and for the other plans.

Eager mode only: the index sets are data-dependent sizes (under ``torch.compile`` the dense
convolution stays). :func:`sparse_pays` decides per layer whether this is faster than the
dense convolution.
"""
import functools
import math
from dataclasses import dataclass
from typing import Any, Hashable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from plinio import _extension
from plinio.ops._conventions import compact_layout

from . import small_conv
from .linear_ops import ConvGeometry
from .padded_conv import pad_spec

_NAME = "plinio.fast.sparse_masked_conv"
Shape = Tuple[int, ...]
ChannelMaskArgs = Tuple[torch.Tensor, int]  # a layer's channel-mask parameter α, its keep-alive channels


# ----------------------------------------------------------------- gathers and scatters
def select_channels(t: torch.Tensor, dim: int, index: Optional[torch.Tensor]) -> torch.Tensor:
    """``t`` restricted to ``index`` along ``dim`` (None: every channel, no copy)."""
    return t if index is None else t.index_select(dim, index)


def _scatter(values: torch.Tensor, dim: int, index: Optional[torch.Tensor],
             size: int) -> torch.Tensor:
    """A tensor with ``size`` entries along ``dim``: ``values`` at ``index``, zeros elsewhere."""
    if index is None:
        return values
    shape = list(values.shape)
    shape[dim] = size
    return values.new_zeros(shape).index_copy_(dim, index, values)


def _scatter_rows_cols(values: torch.Tensor, rows: Optional[torch.Tensor],
                       cols: Optional[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """A weight-shaped tensor holding ``values`` at (rows, cols), zeros elsewhere (two
    ``index_copy_``: much cheaper than one advanced-index assignment)."""
    return _scatter(_scatter(values, 1, cols, shape[1]), 0, rows, shape[0])


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor laid out so (and not also contiguous), else contiguous."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _index_or_none(index: torch.Tensor, size: int) -> Optional[torch.Tensor]:
    """None when ``index`` (sorted, unique) covers every one of ``size`` channels."""
    return None if index.numel() == size else index


# ----------------------------------------------------------------- compact computations
class _CompactKernels:
    """A layer's forward and gradients on compact channel sets; an empty set gives zeros
    (the aten kernels refuse zero channels)."""

    channel_dim = 1
    depthwise = False
    lifted = False  # a 1-D convolution run as a 2-D one of height 1
    memory_format = torch.contiguous_format

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the memory format the kernels run in (no copy when it already is)."""
        return t.contiguous(memory_format=self.memory_format)

    @property
    def layout_key(self) -> Hashable:
        """Equal for kernels whose :meth:`layout` gives the same result."""
        return (self.memory_format, self.lifted)

    def forward(self, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        if x.shape[self.channel_dim] and weight.shape[0]:
            return self._forward(x, weight, bias)
        out = self.layout(x.new_zeros(self.output_shape(tuple(x.shape), weight.shape[0])))
        if bias is None:
            return out
        return out + bias.view((-1,) + (1,) * (out.dim() - 2)) if self.channel_dim == 1 \
            else out + bias

    def input_grad(self, grad: torch.Tensor, weight: torch.Tensor,
                   input_shape: Shape) -> torch.Tensor:
        if grad.shape[self.channel_dim] and input_shape[self.channel_dim]:
            return self._input_grad(grad, weight, input_shape)
        return grad.new_zeros(input_shape)

    def weight_grad(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rows, cols = grad.shape[self.channel_dim], x.shape[self.channel_dim]
        if rows and cols:
            return self._weight_grad(grad, x)
        return grad.new_zeros(self.weight_shape(rows, cols))

    def input_and_weight_grad(self, grad: torch.Tensor, x: torch.Tensor,
                              weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Both gradients from one gradient slice (one aten call where the kernel has it)."""
        return self.input_grad(grad, weight, tuple(x.shape)), self.weight_grad(grad, x)

    def bias_grad(self, grad: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(grad.dim()) if d != self.channel_dim % grad.dim()]
        return grad.sum(dims)

    def output_shape(self, input_shape: Shape, channels: int) -> Shape:
        raise NotImplementedError

    def weight_shape(self, rows: int, cols: int) -> Shape:
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _input_grad(self, grad: torch.Tensor, weight: torch.Tensor,
                    input_shape: Shape) -> torch.Tensor:
        raise NotImplementedError

    def _weight_grad(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _LinearKernels(_CompactKernels):
    """``F.linear`` on compact channel sets (channels on the last dim)."""

    channel_dim = -1

    def output_shape(self, input_shape: Shape, channels: int) -> Shape:
        return input_shape[:-1] + (channels,)

    def weight_shape(self, rows: int, cols: int) -> Shape:
        return (rows, cols)

    def _forward(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def _input_grad(self, grad: torch.Tensor, weight: torch.Tensor,
                    input_shape: Shape) -> torch.Tensor:
        return grad.matmul(weight)

    def _weight_grad(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return grad.reshape(-1, grad.shape[-1]).t().matmul(x.reshape(-1, x.shape[-1]))


class _ConvKernels(_CompactKernels):
    """Zero-padded 1-D/2-D convolution (groups=1 or depthwise) on compact channel sets.

    Symmetric padding goes to the convolution itself; asymmetric (or negative) padding is
    applied to the compact input with ``F.pad`` in forward and again in backward, so only
    the unpadded compact input is saved.

    With ``channels_last`` the convolutions run in that memory format; a 1-D convolution then
    runs as a 2-D one of height 1 (``channels_last`` exists for 4-D tensors only), on tensors
    whose 1-D layout is (N, L, C) in memory, so that lifting them to 4-D copies nothing.

    A convolution of few enough channels runs ``plinio::small_conv`` instead (see
    ``plinio.fast.small_conv``): it takes the padding and the tensors as they are, in either
    layout, and gives its results in the layout it read.

    A strided 1×1 convolution without padding reads the input's strided samples with stride 1,
    as ``plinio::compact_conv`` does: oneDNN (3.12, in torch 2.13) writes out of bounds in the
    weight gradient of a strided 1×1 channels_last convolution on an odd batch with 2 threads.
    """

    def __init__(self, geometry: ConvGeometry, channels_last: bool = False) -> None:
        self.geometry = geometry
        self.depthwise = geometry.groups > 1
        symmetric = geometry.pad_left == geometry.pad_right and min(geometry.pad_left) >= 0
        padding = list(geometry.pad_left) if symmetric else [0] * geometry.ndim
        self.spec = None if symmetric else pad_spec(geometry.pad_left, geometry.pad_right)
        self.lifted = channels_last and geometry.ndim == 1
        if channels_last:
            self.memory_format = torch.channels_last
        lead = [1] if self.lifted else []  # the height-1 dimension of a lifted 1-D convolution
        self.stride = lead + list(geometry.stride)
        # strided 1×1 without padding: the samples it reads, with stride 1 (see the docstring)
        self.steps = self.stride if all(k == 1 for k in geometry.kernel) and symmetric \
            and not any(geometry.pad_left) and any(s > 1 for s in geometry.stride) else None
        if self.steps is not None:
            self.stride = [1] * len(self.steps)
        self.dilation = lead + list(geometry.dilation)
        self.conv_padding = [0] * len(lead) + padding
        self.conv = F.conv1d if len(self.stride) == 1 else F.conv2d
        self.small = small_conv.geometry_fits(geometry)
        self.small_args = (list(geometry.stride), list(geometry.pad_left), list(geometry.pad_right),
                           list(geometry.dilation))

    def _runs_small(self, t: torch.Tensor, channels_a: int, channels_b: int, out_width: int) -> bool:
        return self.small and small_conv.runs_direct(t, self.geometry, channels_a, channels_b, out_width)

    def _forward_runs_small(self, x: torch.Tensor, out_channels: int) -> bool:
        """Whether the forward of ``x`` to ``out_channels`` rows runs the direct kernel."""
        g = self.geometry
        width = (x.shape[-1] + g.size_offset[-1]) // g.stride[-1] + 1
        return self._runs_small(x, x.shape[1], out_channels, width)

    def layout(self, t: torch.Tensor) -> torch.Tensor:
        return compact_layout(t) if self.memory_format == torch.channels_last else t.contiguous()

    def _lift(self, t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(2) if self.lifted else t

    def _lifted_shape(self, shape: Shape) -> Shape:
        return shape[:2] + (1,) + shape[2:] if self.lifted else shape

    def _drop(self, t: torch.Tensor) -> torch.Tensor:
        return t.squeeze(2) if self.lifted else t

    def output_shape(self, input_shape: Shape, channels: int) -> Shape:
        g = self.geometry
        return (input_shape[0], channels) + tuple(
            (n + off) // s + 1 for n, off, s in zip(input_shape[2:], g.size_offset, g.stride))

    def weight_shape(self, rows: int, cols: int) -> Shape:
        return (rows, 1 if self.depthwise else cols) + self.geometry.kernel

    def _groups(self, weight_rows: int) -> int:
        return weight_rows if self.depthwise else 1

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """What the aten convolution reads: the lifted input with the asymmetric padding (the
        spec pads the last dims), or the samples a strided 1×1 convolution reads."""
        x = self._lift(x)
        if self.steps is not None:
            return self._samples(x).contiguous(memory_format=_memory_format(x))
        return x if self.spec is None else F.pad(x, self.spec)

    def _samples(self, t: torch.Tensor) -> torch.Tensor:
        return t[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in self.steps)]

    def _padded_lifted_shape(self, input_shape: Shape) -> Shape:
        """The shape of the lifted input with the asymmetric padding."""
        if self.spec is not None:
            g = self.geometry
            input_shape = input_shape[:2] + tuple(
                n + pl + pr for n, pl, pr in zip(input_shape[2:], g.pad_left, g.pad_right))
        return self._lifted_shape(input_shape)

    def _read_shape(self, lifted_shape: Shape) -> Shape:
        """The shape of what the aten convolution reads from a lifted, padded input."""
        if self.steps is None:
            return lifted_shape
        return lifted_shape[:2] + tuple((n - 1) // s + 1 for n, s in zip(lifted_shape[2:], self.steps))

    def _unpad(self, grad_read: torch.Tensor, lifted_shape: Shape) -> torch.Tensor:
        """The caller's input gradient from aten's gradient of what it read."""
        grad = grad_read
        if self.steps is not None:
            grad = torch.empty(lifted_shape, dtype=grad_read.dtype, device=grad_read.device,
                               memory_format=_memory_format(grad_read)).zero_()
            self._samples(grad).copy_(grad_read)
        # as F.pad's own backward gives: a dense tensor, not a strided view
        grad = grad if self.spec is None else F.pad(grad, [-p for p in self.spec])
        return self._drop(grad)

    def _backward(self, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  mask: List[bool]) -> Tuple[Optional[torch.Tensor], ...]:
        """aten's convolution backward on lifted tensors."""
        return torch.ops.aten.convolution_backward(
            self._lift(grad), x, weight, None, self.stride, self.conv_padding, self.dilation, False,
            [0] * len(self.stride), self._groups(weight.shape[0]), mask)

    def _forward(self, x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self._forward_runs_small(x, weight.shape[0]):
            return torch.ops.plinio.small_conv(x, weight, bias, *self.small_args, self._groups(weight.shape[0]))
        out = self.conv(self._padded(x), self._lift(weight), bias, self.stride, self.conv_padding,
                        self.dilation, self._groups(weight.shape[0]))
        return self._drop(out)

    def _input_grad(self, grad: torch.Tensor, weight: torch.Tensor,
                    input_shape: Shape) -> torch.Tensor:
        if self._runs_small(grad, grad.shape[1], weight.shape[1], grad.shape[-1]):
            return torch.ops.plinio.small_conv_input_grad(grad, weight, list(input_shape), *self.small_args,
                                                          self._groups(weight.shape[0]))
        lifted_shape = self._padded_lifted_shape(input_shape)
        like = grad.new_empty(1).expand(self._read_shape(lifted_shape))
        return self._unpad(self._backward(grad, like, self._lift(weight), [True, False, False])[0], lifted_shape)

    def _weight_grad(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shape = self.weight_shape(grad.shape[1], x.shape[1])
        if self._runs_small(grad, grad.shape[1], x.shape[1], grad.shape[-1]):
            return torch.ops.plinio.small_conv_weight_grad(grad, x, list(shape), *self.small_args,
                                                           self._groups(grad.shape[1]))
        like = grad.new_empty(1).expand(self._lifted_shape(shape))
        return self._drop(self._backward(grad, self._padded(x), like, [False, True, False])[1])

    def compact_conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     rows: Optional[torch.Tensor], cols: Optional[torch.Tensor],
                     mask: Optional[ChannelMaskArgs] = None) -> torch.Tensor:
        """conv(x, weight[rows][:, cols], bias[rows]) of a compact layer (its input holds the
        channels the block reads, its output the rows) in one native op with its autograd in
        C++, ``plinio::compact_conv``: the same computations as :class:`_SparseMaskedConv`'s
        (the weight and bias gradients in their whole shape). ``mask``: ``weight`` and
        ``bias`` are the layer's unmasked ones and the op gives the mask parameter its
        gradient too (see :func:`run_sparse_plan`)."""
        direct = self._forward_runs_small(x, weight.shape[0] if rows is None else rows.shape[0])
        alpha, keep_alive = (None, 0) if mask is None else mask
        return torch.ops.plinio.compact_conv.default(x, weight, bias, rows, cols, *self.small_args,
                                                     self.depthwise, direct, alpha, keep_alive)

    def input_and_weight_grad(self, grad: torch.Tensor, x: torch.Tensor,
                              weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not (grad.shape[1] and x.shape[1]) or self._runs_small(grad, grad.shape[1], x.shape[1], grad.shape[-1]):
            return super().input_and_weight_grad(grad, x, weight)
        grad_x, grad_w, _ = self._backward(grad, self._padded(x), self._lift(weight), [True, True, False])
        return self._unpad(grad_x, self._padded_lifted_shape(tuple(x.shape))), self._drop(grad_w)


# ----------------------------------------------------------------- the autograd function
@dataclass(frozen=True)
class SparsePlan:
    """Which channel sets each computation of one layer uses (None: every channel, no
    gather/scatter), validated once by :func:`sparse_plan` and reusable for every call with
    the same masks."""

    kernels: _CompactKernels
    out_channels: int
    in_channels: int
    kept: Optional[torch.Tensor]          # K: output rows computed
    forward_in: Optional[torch.Tensor]    # input channels read by the forward
    saved_in: Optional[torch.Tensor]      # input channels saved for the weight gradient
    weight_rows: Optional[torch.Tensor]   # rows of gW' computed
    weight_cols: Optional[torch.Tensor]   # columns of gW' computed (None for depthwise)
    bias_rows: Optional[torch.Tensor]     # rows of gb' computed
    grad_in: Optional[torch.Tensor]       # input channels of gx computed
    one_backward_call: bool               # gx and gW' use the same gradient rows and input
    compact_in: bool = False              # x holds only the forward_in channels (gx too)
    compact_out: bool = False             # y holds only the kept rows (its gradient too)
    native: bool = False                  # a compact conv run by plinio::compact_conv
    column_block: bool = False            # a Linear of a compact input, every row: autograd ops

    def __post_init__(self) -> None:
        # compact on both sides, the computations are those of a convolution of the weight
        # block (kept, forward_in): one native op runs them (and its autograd in C++); so they
        # are for a dense input read whole into a compact output (every column, no gradient
        # of pruned rows), where the call's input needs no gradient (see run_sparse_plan)
        native = self.compact_out and isinstance(self.kernels, _ConvKernels) and \
            (self.compact_in or self.reads_whole_input) and native_compact_conv()
        object.__setattr__(self, "native", native)
        object.__setattr__(self, "column_block", self.reads_column_block)

    @property
    def reads_column_block(self) -> bool:
        """A Linear from a compact input to every output row (a classifier after pruned
        features): F.linear with the weight's column block, index_select and the linear op,
        whose autograd gives the same gradients (the weight's scattered into its shape)
        without a Python backward."""
        return isinstance(self.kernels, _LinearKernels) and self.compact_in and not self.compact_out \
            and self.kept is None and self.weight_rows is None and self.bias_rows is None \
            and self.weight_cols is self.forward_in and self.grad_in is self.forward_in

    @property
    def reads_whole_input(self) -> bool:
        """A dense input whose every channel the forward and the weight gradient read (not
        depthwise: the native op's depthwise input holds the kept channels only), with no
        gradient of pruned rows."""
        return not self.compact_in and not self.kernels.depthwise and self.forward_in is None and \
            self.grad_in is None and self.weight_cols is None and self.weight_rows is self.kept and \
            self.bias_rows is self.kept

    def input_channels(self) -> int:
        """Channels of the input a call receives."""
        if self.compact_in and self.forward_in is not None:
            return self.forward_in.numel()
        return self.in_channels

    @property
    def takes_compact_weight(self) -> bool:
        """Whether every computation of the layer reads only the weight rows ``kept`` and the
        columns ``forward_in`` (no gradient of pruned rows, no input gradient of dead
        channels; not depthwise), so that a caller building its weight from parts may build
        only that block (``run_sparse_plan(..., compact_weight=True)``)."""
        return not self.kernels.depthwise and self.weight_rows is self.kept and \
            self.bias_rows is self.kept and self.grad_in is self.forward_in


class _SparseMaskedConv(torch.autograd.Function):
    """conv(x, W', b') computing only the channel sets of a :class:`SparsePlan`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                plan: SparsePlan, keep_full_input: bool, gathered: Optional[torch.Tensor],
                compact_weight: bool) -> torch.Tensor:
        k = plan.kernels
        dim = k.channel_dim
        if plan.compact_in:
            x_fwd = k.layout(x)
        else:
            x_fwd = k.layout(select_channels(x, dim, plan.forward_in) if gathered is None else gathered)
        if compact_weight:  # the caller built the block (kept, forward_in) only
            w_rows = w_fwd = weight
            b_fwd = bias
        else:
            w_rows = select_channels(weight, 0, plan.kept)
            w_fwd = w_rows if k.depthwise else select_channels(w_rows, 1, plan.forward_in)
            b_fwd = None if bias is None else select_channels(bias, 0, plan.kept)
        y = k.forward(x_fwd, w_fwd, b_fwd)
        if plan.compact_out:  # compact tensors in the kernels' layout, as plinio::compact_conv gives them
            y = k.layout(y)
        else:
            # a full-width output in the layout the dense layer gives (contiguous for the
            # contiguous input of a compact layer): only compact tensors are channels_last
            dense_format = torch.contiguous_format if plan.compact_in else _memory_format(x)
            y = _scatter(y, dim, plan.kept, plan.out_channels).contiguous(memory_format=dense_format)
        if plan.compact_in:
            x_saved = x_fwd
        elif keep_full_input:
            x_saved = x
        else:
            x_saved = x_fwd if plan.saved_in is plan.forward_in else select_channels(x, dim, plan.saved_in)
        w_for_grad_in = w_fwd if plan.grad_in is plan.forward_in else w_rows
        ctx.save_for_backward(x_saved, w_for_grad_in)
        ctx.plan, ctx.keep_full_input, ctx.compact_weight = plan, keep_full_input, compact_weight
        ctx.x_shape, ctx.w_shape = tuple(x.shape), tuple(weight.shape)
        ctx.x_format = _memory_format(x)
        ctx.has_bias = bias is not None
        # y may be a view made here (the squeeze of a lifted 1-D result, a compact layout):
        # autograd forbids in-place ops on such a view of a Function's output (`y += r`,
        # ReLU(inplace=True) after the layer), not on a detached alias of the same memory
        return y.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(f"{_NAME}: double backward (create_graph=True) is not supported by sparse "
                               "execution; build the PIT / PITSuperNet wrapper with sparse=False (or set "
                               "`.sparse = False`) for such steps (README \"Sparse execution\")")
        return _SparseMaskedConv._gradients(ctx, grad)

    @staticmethod
    def _gradients(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x_saved, w_for_grad_in = ctx.saved_tensors
        plan: SparsePlan = ctx.plan
        k = plan.kernels
        dim = k.channel_dim
        if ctx.keep_full_input and not plan.compact_in:
            x_saved = k.layout(select_channels(x_saved, dim, plan.saved_in))
        needs_x, needs_w, needs_b = ctx.needs_input_grad[:3]
        grad = k.layout(grad)
        grad_kept = grad if plan.compact_out else select_channels(grad, dim, plan.kept)
        in_shape = list(ctx.x_shape)
        if plan.grad_in is not None and not plan.compact_in:
            in_shape[dim] = plan.grad_in.numel()
        grad_x = grad_w = grad_b = None
        if needs_x and needs_w and plan.one_backward_call:
            grad_x, grad_w = k.input_and_weight_grad(grad_kept, x_saved, w_for_grad_in)
        else:
            if needs_x:
                grad_x = k.input_grad(grad_kept, w_for_grad_in, tuple(in_shape))
            if needs_w:
                grad_rows = grad_kept if plan.weight_rows is plan.kept else \
                    select_channels(grad, dim, plan.weight_rows)
                grad_w = k.weight_grad(grad_rows, x_saved)
        if grad_x is not None and not plan.compact_in:
            # in the input's layout: the op that produced it (e.g. a dense depthwise conv) runs
            # its backward several times slower on a gradient of another layout
            grad_x = _scatter(grad_x, dim, plan.grad_in, ctx.x_shape[dim]).contiguous(memory_format=ctx.x_format)
        if grad_w is not None and not ctx.compact_weight:
            grad_w = _scatter_rows_cols(grad_w, plan.weight_rows, plan.weight_cols, ctx.w_shape)
        if needs_b and ctx.has_bias:
            grad_rows = grad_kept if plan.bias_rows is plan.kept else \
                select_channels(grad, dim, plan.bias_rows)
            grad_b = k.bias_grad(grad_rows)
            if not ctx.compact_weight:
                grad_b = _scatter(grad_b, 0, plan.bias_rows, ctx.w_shape[0])
        return grad_x, grad_w, grad_b, None, None, None, None


# ----------------------------------------------------------------- public entry point
def _check_index(index: Optional[torch.Tensor], what: str, size: int,
                 device: torch.device) -> None:
    """Index tensors are 1-D int64 on the input's device, sorted, unique and in range. The
    content is checked on CPU only (with numpy: a few µs; on CUDA it would cost a host sync
    per layer, and the caller builds the indices on CPU anyway)."""
    if index is None:
        return
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype != torch.int64:
        got = f"{index.dtype} of shape {tuple(index.shape)}" if isinstance(index, torch.Tensor) \
            else type(index).__name__
        raise TypeError(f"{_NAME}: {what} must be a 1-D int64 tensor of channel indices, "
                        f"got {got}")
    if index.device != device:
        raise ValueError(f"{_NAME}: {what} is on {index.device} but the input is on "
                         f"{device}; move the indices to the input's device")
    if index.numel() > size:
        raise ValueError(f"{_NAME}: {what} has {index.numel()} indices for {size} channels")
    if index.device.type == "cpu" and index.numel():
        values = index.numpy()
        if values[0] < 0 or values[-1] >= size or not (values[1:] > values[:-1]).all():
            raise ValueError(f"{_NAME}: {what} must hold sorted, unique channel indices in "
                             f"[0, {size}); got {values.tolist()}")


@functools.lru_cache(maxsize=None)
def native_compact_conv() -> bool:
    """Whether the compiled op library has ``plinio::compact_conv`` (else the compact
    convolutions run :class:`_SparseMaskedConv`, the same computations in Python)."""
    return _extension.load() and hasattr(torch.ops.plinio, "compact_conv")


def _kernels_for(geometry: Optional[ConvGeometry], channels_last: bool = False) -> _CompactKernels:
    """The compact computations of a layer of this geometry (None: Linear); 2-D convolutions
    with ``channels_last`` run in that memory format."""
    if geometry is None:
        return _LinearKernels()
    g = geometry
    if g.groups != 1 and not g.groups == g.in_channels == g.out_channels:
        raise ValueError(f"{_NAME}: only groups=1 and depthwise convolutions are supported, "
                         f"got groups={g.groups} with {g.in_channels} input and "
                         f"{g.out_channels} output channels")
    return _ConvKernels(g, channels_last)


def _count(index: Optional[torch.Tensor], size: int) -> int:
    return size if index is None else index.numel()


def _check_shapes(plan: SparsePlan, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor], compact_weight: bool) -> None:
    """The tensors match the layer the plan was made for (with ``compact_weight``: its block
    of rows ``kept`` and columns ``forward_in``)."""
    rows, cols = plan.out_channels, plan.in_channels
    if compact_weight:
        rows, cols = _count(plan.kept, rows), _count(plan.forward_in, cols)
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(f"{_NAME}: bias of shape {tuple(bias.shape)} does not match "
                         f"{weight.shape[0]} output channels")
    kernels = plan.kernels
    if not isinstance(kernels, _ConvKernels):
        if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != plan.input_channels() or \
                tuple(weight.shape) != (rows, cols):
            raise ValueError(f"{_NAME}: a Linear layer (geometry=None) of {plan.in_channels} inputs and "
                             f"{plan.out_channels} outputs needs a weight ({rows}, {cols}) and an input (..., in); "
                             f"got weight {tuple(weight.shape)} and input {tuple(x.shape)}")
        return
    g = kernels.geometry
    expected = (rows, cols // g.groups) + tuple(g.kernel)
    if tuple(weight.shape) != expected:
        block = " (the compact block of kept rows and live columns)" if compact_weight else ""
        raise ValueError(f"{_NAME}: weight of shape {tuple(weight.shape)} does not match the "
                         f"geometry (expected {expected}{block})")
    if x.dim() != g.ndim + 2 or x.shape[1] != plan.input_channels():
        compact = " (compact: its live channels)" if plan.compact_in else ""
        raise ValueError(f"{_NAME}: input of shape {tuple(x.shape)} does not match a "
                         f"{g.ndim}-D convolution of {plan.input_channels()} channels{compact}")


def sparse_plan(geometry: Optional[ConvGeometry], out_channels: int, in_channels: int,
                kept_out: Optional[torch.Tensor], live_in: Optional[torch.Tensor], *,
                grad_pruned_rows: bool, grad_dead_inputs: bool, device: torch.device,
                compact_in: bool = False, compact_out: bool = False, channels_last: bool = False) -> SparsePlan:
    """The channel sets of a layer (see :func:`sparse_masked_conv` for the arguments),
    checked once: a caller running the same layer with the same masks many times (a search
    step) makes the plan once and calls :func:`run_sparse_plan`.

    Compact execution (``plinio.fast.sparse_step``): with ``compact_in`` the input holds
    only the channels the forward reads (``live_in``; ``kept_out`` for a depthwise conv)
    and its gradient is returned for those channels only; with ``compact_out`` the output
    holds only the ``kept_out`` rows and so does its gradient. Both leave out gradients
    that are exactly 0 or reach nothing only under the flags' conditions: ``compact_out``
    needs ``grad_pruned_rows=False``, ``compact_in`` of a non-depthwise layer needs
    ``grad_dead_inputs=False``. ``channels_last``: a 2-D (or lifted 1-D) convolution runs in
    that memory format even without a compact side (compact ones always do)."""
    if compact_out and grad_pruned_rows:
        raise ValueError(f"{_NAME}: a compact output drops the gradient of the pruned rows; it needs "
                         "grad_pruned_rows=False")
    depthwise_geometry = geometry is not None and geometry.groups > 1
    if compact_in and grad_dead_inputs and not depthwise_geometry:
        raise ValueError(f"{_NAME}: a compact input drops the gradient of its dead channels; it needs "
                         "grad_dead_inputs=False")
    # compact tensors live in channels_last: at the few channels pruning leaves, oneDNN's
    # convolutions and their gradients are several times faster in it than in NCHW
    kernels = _kernels_for(geometry, channels_last=channels_last or compact_in or compact_out)
    if geometry is not None and (geometry.out_channels, geometry.in_channels) != (out_channels, in_channels):
        raise ValueError(f"{_NAME}: {in_channels} input and {out_channels} output channels do not match "
                         f"the geometry ({geometry.in_channels} and {geometry.out_channels})")
    _check_index(kept_out, "kept_out", out_channels, device)
    _check_index(live_in, "live_in", in_channels, device)
    kept = None if kept_out is None else _index_or_none(kept_out, out_channels)
    live = None if live_in is None else _index_or_none(live_in, in_channels)
    if kernels.depthwise:
        rows = live if grad_pruned_rows else kept
        return SparsePlan(kernels, out_channels, in_channels, kept=kept, forward_in=kept, saved_in=rows,
                          weight_rows=rows, weight_cols=None, bias_rows=None if grad_pruned_rows else kept,
                          grad_in=kept, one_backward_call=not grad_pruned_rows, compact_in=compact_in,
                          compact_out=compact_out)
    rows = None if grad_pruned_rows else kept
    grad_in = None if grad_dead_inputs else live
    return SparsePlan(kernels, out_channels, in_channels, kept=kept, forward_in=live, saved_in=live,
                      weight_rows=rows, weight_cols=live, bias_rows=rows, grad_in=grad_in,
                      one_backward_call=rows is kept and grad_in is live, compact_in=compact_in,
                      compact_out=compact_out)


def runs_native(plan: SparsePlan, x: torch.Tensor) -> bool:
    """Whether :func:`run_sparse_plan` runs ``plan`` on ``x`` as the native op: a compact
    layer, or a dense input read whole into a compact output where the input needs no
    gradient or is laid out channels_last already (its gradient then has the layout the
    Python path gives it)."""
    return plan.native and (plan.compact_in or not x.requires_grad or _memory_format(x) == torch.channels_last)


def run_sparse_plan(plan: SparsePlan, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *,
                    keep_full_input: bool = False, gathered_input: Optional[torch.Tensor] = None,
                    compact_weight: bool = False, mask: Optional[ChannelMaskArgs] = None) -> torch.Tensor:
    """:func:`sparse_masked_conv` with a plan made by :func:`sparse_plan`. ``compact_weight``
    (only where ``plan.takes_compact_weight``): ``weight`` and ``bias`` are already the block
    of rows ``plan.kept`` and columns ``plan.forward_in``, and their gradients are returned
    for that block (a caller building its weight from parts then builds only that block).

    ``mask`` (α, keep-alive channels; only where :func:`runs_native`): ``weight`` and ``bias``
    are the layer's unmasked ones, ``plan.kept`` the channels its mask α keeps, and α gets the
    gradient ``plinio.ops.pit_masked_weight`` would give it (the mask is 1 on every row
    computed, and a compact output has no gradient on the others), so that the layer needs
    no masked weight of its own in the step."""
    if compact_weight and not plan.takes_compact_weight:
        raise ValueError(f"{_NAME}: compact_weight needs a plan whose computations all read the kept rows and "
                         "live columns only (no pruned-row or dead-input gradient, not depthwise)")
    if mask is not None and (compact_weight or not runs_native(plan, x)):
        raise ValueError(f"{_NAME}: an unmasked weight with its mask needs a layer the native op runs whole "
                         "(see runs_native)")
    _check_shapes(plan, x, weight, bias, compact_weight)
    if gathered_input is not None and plan.compact_in:
        raise ValueError(f"{_NAME}: gathered_input does not apply to a compact input")
    if plan.column_block:
        return F.linear(x, weight if compact_weight else select_channels(weight, 1, plan.forward_in), bias)
    if runs_native(plan, x):
        if not plan.compact_in and gathered_input is not None and not x.requires_grad:
            x = gathered_input  # the caller's copy in the kernels' layout
        rows, cols = (None, None) if compact_weight else \
            (plan.kept, None if plan.kernels.depthwise else plan.forward_in)
        return plan.kernels.compact_conv(x, weight, bias, rows, cols, mask)
    return _SparseMaskedConv.apply(x, weight, bias, plan, keep_full_input, gathered_input, compact_weight)


def sparse_masked_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       geometry: Optional[ConvGeometry], kept_out: Optional[torch.Tensor],
                       live_in: Optional[torch.Tensor] = None, *, grad_pruned_rows: bool,
                       grad_dead_inputs: bool, keep_full_input: bool = False,
                       gathered_input: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv(x, weight, bias)`` (``F.linear`` when ``geometry`` is None) computed on the
    kept output channels and live input channels only, with the same values and the same
    gradients as the dense op for every parameter (see the module docstring for the flags).

    Contract (not checked, it would cost a pass over the data): rows of ``weight`` and
    ``bias`` outside ``kept_out`` are exactly 0, and input channels outside ``live_in``
    (None: every channel) are exactly 0. ``kept_out`` (None: every row) / ``live_in`` are
    sorted unique int64 channel indices on the input's device, computed once per step by the
    caller.
    Linear: the channels are the last dimension of ``x``. Depthwise convolutions:
    ``kept_out`` indexes inputs and outputs, ``grad_dead_inputs`` does not apply (their input
    gradient outside ``kept_out`` is exactly 0). Eager autograd only: a double backward
    (``create_graph=True``) raises.

    Saved for backward: the live input channels, gathered (smaller than ``x``); with
    ``keep_full_input``, ``x`` itself, gathered again in backward (no extra bytes when
    another op keeps ``x`` anyway, e.g. the ReLU that produced it). ``gathered_input``:
    ``x`` restricted to the channels the forward reads (``live_in``, ``kept_out`` for a
    depthwise convolution; all of ``x`` when None), in any layout (best: the one the kernels
    run in), computed without autograd by a caller that shares one copy among the
    convolutions reading the same input.
    """
    if geometry is None and x.dim() < 1:
        raise ValueError(f"{_NAME}: a Linear layer (geometry=None) needs an input (..., in); got a 0-d input")
    in_channels = x.shape[-1] if geometry is None else geometry.in_channels
    out_channels = weight.shape[0] if geometry is None else geometry.out_channels
    plan = sparse_plan(geometry, out_channels, in_channels, kept_out, live_in, grad_pruned_rows=grad_pruned_rows,
                       grad_dead_inputs=grad_dead_inputs, device=x.device)
    return run_sparse_plan(plan, x, weight, bias, keep_full_input=keep_full_input, gathered_input=gathered_input)


# ----------------------------------------------------------------- when it pays
@dataclass(frozen=True)
class LayerWork:
    """What the decision rule needs to know of a layer: its geometry (None: Linear), its
    full channel counts, its output positions per call (batch × output size), and which
    convolutions a call runs: with ``backward`` the weight gradient too, with
    ``input_grad`` also the input gradient (both by default)."""

    geometry: Optional[ConvGeometry]
    in_channels: int
    out_channels: int
    positions: int
    backward: bool = True
    input_grad: bool = True

    @property
    def convolutions(self) -> int:
        """How many of the three convolutions (forward, input and weight gradient) run."""
        return 1 + (2 if self.input_grad else 1) if self.backward else 1

    @property
    def depthwise(self) -> bool:
        return self.geometry is not None and self.geometry.groups > 1

    @property
    def pointwise(self) -> bool:
        """A Linear or a 1×1 convolution: little compute per byte moved."""
        return self.geometry is None or all(k == 1 for k in self.geometry.kernel)

    def dense_macs(self) -> int:
        """Multiply-accumulates of the dense convolutions of a call."""
        kernel = 1 if self.geometry is None else math.prod(self.geometry.kernel)
        per_row = 1 if self.depthwise else self.in_channels
        return self.convolutions * self.positions * self.out_channels * per_row * kernel

    def fraction_left(self, kept: int, live: int, grad_pruned_rows: bool,
                      grad_dead_inputs: bool) -> float:
        """Sparse multiply-accumulates over the dense ones (the convolutions of a call)."""
        if self.depthwise:
            weight_rows = live if grad_pruned_rows else kept
            rows = kept + (kept if self.input_grad else 0) + weight_rows if self.backward else kept
            return rows / (self.convolutions * self.out_channels)
        weight_rows = self.out_channels if grad_pruned_rows else kept
        grad_in = self.in_channels if grad_dead_inputs else live
        work = kept * live
        if self.backward:
            work += weight_rows * live + (kept * grad_in if self.input_grad else 0)
        return work / (self.convolutions * self.out_channels * self.in_channels)


MIN_DENSE_MACS = 2_000_000  # below, the ~60 µs of gathers, scatters and Python dominate


def sparse_pays(work: LayerWork, kept: int, live: int, grad_pruned_rows: bool,
                grad_dead_inputs: bool) -> bool:
    """Whether ``sparse_masked_conv`` is expected to be faster than the dense layer, from
    the layer's geometry and its current kept-output / live-input counts (host ints).

    Derived from ``bench/bench_sparse_conv.py --threads 1 --clock cpu`` (forward + backward,
    batch 32, the layers of the benchmark workloads at 0/25/50/75 % pruned, median of 11
    interleaved per-round ratios to the dense layer, ranges over two runs; AMD EPYC 2-core
    VM, torch 2.13 CPU). On that shared machine the 2-thread wall-clock runs were dominated
    by other jobs (the dense time of one layer varied 10× between rounds), so the thresholds
    below are 1-thread ones:

    * depthwise: never. The conv is memory-bound and the gathers and scatters move as many
      bytes as it does: 0.94–1.37 of the dense time even at 75 % pruned.
    * Linear and 1×1 convs: at most 15 % of the work left and at least 16 kept outputs and
      live inputs (75 % pruned of 64 to 256 channels: 0.60–0.81 of dense; of 8 to 32
      channels, where 2 to 8 are left: 0.76–1.21; 50 % pruned: 0.89–1.64).
    * other convs: at most 40 % of the work left (50 % pruned: 0.32–1.06, 75 %: 0.14–0.91),
      or at most 70 % left with at least 32 kept outputs and live inputs (25 % pruned of
      64–128 channels: 0.63–0.99; of 16 or 32 channels, where 12 or 24 are left: 1.04–1.53:
      a compact conv whose channel count is not a multiple of 16 runs at about half the
      speed per multiply-accumulate).
    * never when the dense layer does fewer than MIN_DENSE_MACS multiply-accumulates.
    """
    if work.depthwise or work.dense_macs() < MIN_DENSE_MACS:
        return False
    left = work.fraction_left(kept, live, grad_pruned_rows, grad_dead_inputs)
    smallest = min(kept, live)
    if work.pointwise:
        return left <= 0.15 and smallest >= 16
    return left <= 0.4 or (left <= 0.7 and smallest >= 32)
