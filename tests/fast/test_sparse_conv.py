"""``sparse_masked_conv``: values and gradients equal to the dense masked conv / linear
(x, W, b and the mask parameters α, β, γ through ``plinio.ops.pit_masked_weight``) on random
layers and masks, the two flags and the conditions under which leaving them off is exact,
saved-for-backward bytes, bad input, and the per-layer decision rule."""
import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import plinio.ops as ops
from plinio.fast.linear_ops import ConvGeometry, conv_geometry, reference_conv
from plinio.fast.sparse_conv import (LayerWork, _SparseMaskedConv, run_sparse_plan, sparse_masked_conv, sparse_pays,
                                     sparse_plan)
from plinio.ops._conventions import compact_layout
from plinio.ops.reference import dilation_levels

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=2e-4, atol=2e-4)}
KINDS = ("conv1d", "conv2d", "depthwise1d", "depthwise2d", "linear")
KEEP_ALL = (0, 1, 2, 3, 4, 5)


@dataclass
class MaskedLayer:
    """A PIT layer's parameters: weight, bias, channel mask α, Conv1d time masks β/γ."""

    geometry: Optional[ConvGeometry]  # None: Linear
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    alpha: torch.Tensor
    beta: Optional[torch.Tensor]
    gamma: Optional[torch.Tensor]
    keep_alive: int

    def params(self) -> Dict[str, torch.Tensor]:
        named = {"weight": self.weight, "bias": self.bias, "alpha": self.alpha,
                 "beta": self.beta, "gamma": self.gamma}
        return {k: v for k, v in named.items() if v is not None}

    def masked(self) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """(W', b', indices of the kept output channels)."""
        w, b, channel, _ = ops.pit_masked_weight(self.weight, self.bias, self.alpha, self.beta,
                                                 self.gamma, keep_alive=self.keep_alive,
                                                 return_masks=True)
        return w, b, torch.nonzero(channel.detach() > 0.5).flatten()

    @property
    def depthwise(self) -> bool:
        return self.geometry is not None and self.geometry.groups > 1

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        w, b, _ = self.masked()
        return F.linear(x, w, b) if self.geometry is None else reference_conv(x, w, b,
                                                                              self.geometry)

    def sparse(self, x: torch.Tensor, live: Optional[torch.Tensor], grad_pruned_rows: bool,
               grad_dead_inputs: bool) -> torch.Tensor:
        w, b, kept = self.masked()
        return sparse_masked_conv(x, w, b, self.geometry, kept, live,
                                  grad_pruned_rows=grad_pruned_rows,
                                  grad_dead_inputs=grad_dead_inputs)


def _mask_values(kept: torch.Tensor, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Mask parameters above the 0.5 threshold where ``kept``, below elsewhere, random signs."""
    magnitude = torch.where(kept, 0.55 + 0.4 * torch.rand(kept.shape, generator=gen),
                            0.45 * torch.rand(kept.shape, generator=gen))
    sign = torch.where(torch.rand(kept.shape, generator=gen) < 0.5, -1.0, 1.0)
    return (magnitude * sign).to(dtype)


def make_layer(kind: str, cin: int, cout: int, kernel: int, stride: int, dilation: int,
               pad_left: int, pad_right: int, bias: bool, kept: torch.Tensor,
               keep_alive: int, seed: int, dtype: torch.dtype) -> MaskedLayer:
    """A random layer of the given kind; depthwise layers use ``cin`` channels."""
    gen = torch.Generator().manual_seed(seed)
    geometry = None
    if kind == "linear":
        w_shape: Tuple[int, ...] = (cout, cin)
    else:
        ndim = int(kind[-2])
        groups = cin if kind.startswith("depthwise") else 1
        cout = cin if groups > 1 else cout
        geometry = ConvGeometry(ndim, cin, cout, groups, (kernel,) * ndim, (stride,) * ndim,
                                (dilation,) * ndim, (pad_left,) * ndim, (pad_right,) * ndim, bias)
        w_shape = (cout, cin // groups) + (kernel,) * ndim
    kept = kept[:cout]
    weight = torch.randn(w_shape, generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(cout, generator=gen, dtype=dtype).requires_grad_() if bias else None
    alpha = _mask_values(kept, gen, dtype).requires_grad_()
    beta = gamma = None
    if kind.endswith("1d") and kernel > 1:  # random receptive-field and dilation masks
        beta = (0.6 * torch.rand(kernel, generator=gen, dtype=dtype)).requires_grad_()
        gamma = torch.rand(dilation_levels(kernel), generator=gen, dtype=dtype).requires_grad_()
    return MaskedLayer(geometry, weight, b, alpha, beta, gamma, keep_alive)


def make_input(layer: MaskedLayer, live_mask: torch.Tensor, batch: int, size: int, seed: int
               ) -> torch.Tensor:
    """A leaf input whose channels outside ``live_mask`` are exactly 0."""
    gen = torch.Generator().manual_seed(seed + 1)
    dtype = layer.weight.dtype
    if layer.geometry is None:
        cin = layer.weight.shape[1]
        x = torch.randn(batch, size, cin, generator=gen, dtype=dtype)
        return (x * live_mask[:cin].to(dtype)).requires_grad_()
    g = layer.geometry
    x = torch.randn((batch, g.in_channels) + (size,) * g.ndim, generator=gen, dtype=dtype)
    mask = live_mask[:g.in_channels].to(dtype).view((-1,) + (1,) * g.ndim)
    return (x * mask).requires_grad_()


def run(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
        inputs: Dict[str, torch.Tensor], seed: int = 7
        ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Output and gradients of Σ cot·forward(x) w.r.t. x and ``inputs`` (a seeded cotangent)."""
    y = forward(x)
    cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed),
                      dtype=y.dtype).to(y.device)
    names = ["x"] + list(inputs)
    grads = torch.autograd.grad(y, [x] + list(inputs.values()), cot)
    return y, dict(zip(names, grads))


@st.composite
def random_cases(draw: st.DrawFn) -> Tuple[MaskedLayer, torch.Tensor, torch.Tensor]:
    """A random layer with random masks, and an input with random dead channels."""
    kind = draw(st.sampled_from(KINDS))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    cin, cout = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    kernel, stride, dilation = draw(st.integers(1, 4)), draw(st.integers(1, 2)), \
        draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["same", "symmetric", "asymmetric"]))
    total = dilation * (kernel - 1)
    if padding == "same":
        pad_left, pad_right = total // 2, total - total // 2
    elif padding == "symmetric":
        pad_left = pad_right = draw(st.integers(0, 2))
    else:
        pad_left, pad_right = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    kept = torch.tensor(draw(st.lists(st.booleans(), min_size=6, max_size=6)))
    live = torch.tensor(draw(st.lists(st.booleans(), min_size=6, max_size=6)))
    seed = draw(st.integers(0, 2 ** 16))
    layer = make_layer(kind, cin, cout, kernel, stride, dilation, pad_left, pad_right,
                       draw(st.booleans()), kept, draw(st.integers(0, 1)), seed, dtype)
    size = max(total + 1 - pad_left - pad_right, 1) + draw(st.integers(0, 4))
    x = make_input(layer, live, draw(st.integers(1, 3)), size, seed)
    return layer, x, torch.nonzero(live[:x.shape[1 if layer.geometry else -1]]).flatten()


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, **TOL[want.dtype], msg=lambda m: f"{what}: {m}")


@SETTINGS
@given(random_cases())
def test_with_both_flags_every_value_and_gradient_equals_the_dense_layer(case):
    layer, x, live = case
    y_dense, g_dense = run(layer.dense, x, layer.params())
    y_sparse, g_sparse = run(lambda t: layer.sparse(t, live, True, True), x, layer.params())
    _assert_close(y_sparse, y_dense, "output")
    for name in g_dense:
        _assert_close(g_sparse[name], g_dense[name], f"gradient of {name}")


@SETTINGS
@given(random_cases())
def test_without_flags_only_pruned_mask_rows_and_dead_inputs_are_skipped(case):
    """Everything but α of pruned channels and gx of dead inputs equals the dense layer; the
    skipped gradients are exact zeros (non-depthwise; a depthwise gx is exact anyway)."""
    layer, x, live = case
    _, _, kept = layer.masked()
    y_dense, g_dense = run(layer.dense, x, layer.params())
    y_sparse, g_sparse = run(lambda t: layer.sparse(t, live, False, False), x, layer.params())
    _assert_close(y_sparse, y_dense, "output")
    for name in ("weight", "bias", "beta", "gamma"):
        if name in g_dense:
            _assert_close(g_sparse[name], g_dense[name], f"gradient of {name}")
    _assert_close(g_sparse["alpha"][kept], g_dense["alpha"][kept], "gradient of kept α")
    dim = -1 if layer.geometry is None else 1
    if layer.depthwise:
        _assert_close(g_sparse["x"], g_dense["x"], "gradient of x")
        return
    dead = torch.ones(x.shape[dim], dtype=torch.bool)
    dead[live] = False
    _assert_close(g_sparse["x"].index_select(dim, live), g_dense["x"].index_select(dim, live),
                  "gradient of live inputs")
    assert not g_sparse["x"].index_select(dim, torch.nonzero(dead).flatten()).any()


def _layer_and_input(kind: str, kept: Tuple[int, ...], live: Tuple[int, ...], seed: int = 3,
                     keep_alive: int = 0, **geometry) -> Tuple[MaskedLayer, torch.Tensor]:
    params = dict(cin=6, cout=6, kernel=3, stride=1, dilation=1, pad_left=1, pad_right=1,
                  bias=True)
    params.update(geometry)
    kept_mask = torch.zeros(6, dtype=torch.bool)
    kept_mask[list(kept)] = True
    live_mask = torch.zeros(6, dtype=torch.bool)
    live_mask[list(live)] = True
    layer = make_layer(kind, kept=kept_mask, keep_alive=keep_alive, seed=seed,
                       dtype=torch.float64, **params)
    return layer, make_input(layer, live_mask, 2, 9, seed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kept, live, keep_alive", [
    ((0, 1, 2, 3, 4, 5), (0, 1, 2, 3, 4, 5), 0),  # all kept: no gather, no scatter
    ((), (0, 1, 2, 3, 4, 5), 1),                   # all pruned: the keep-alive channel only
    ((), (1, 4), 0),                                # no kept channel at all
    ((0, 2, 5), (), 0),                             # no live input: the output is the bias
])
def test_extreme_channel_sets(kind, kept, live, keep_alive):
    layer, x = _layer_and_input(kind, kept, live, keep_alive=keep_alive)
    live_idx = torch.tensor(live, dtype=torch.int64)
    y_dense, g_dense = run(layer.dense, x, layer.params())
    for flags in ((True, True), (False, False)):
        y_sparse, g_sparse = run(lambda t: layer.sparse(t, live_idx, *flags), x, layer.params())
        _assert_close(y_sparse, y_dense, "output")
        for name in ("weight", "bias") + (("x", "alpha") if flags[0] else ()):
            _assert_close(g_sparse[name], g_dense[name], f"gradient of {name}")


@pytest.mark.parametrize("kind", ("conv1d", "conv2d", "depthwise2d", "linear"))
def test_mask_flips_between_calls(kind):
    """The same layer called with masks that change between calls (as after an optimizer
    step): every call matches the dense layer, nothing is carried over."""
    layer, x = _layer_and_input(kind, kept=(0, 2, 3), live=(0, 1, 2, 3, 4, 5))
    for flip in ([], [1, 2], [2, 5], [0, 1, 2, 3, 4, 5], [1, 5]):
        with torch.no_grad():
            old = layer.alpha[flip]
            layer.alpha[flip] = torch.where(old.abs() > 0.5, 0.1, 0.9).to(old.dtype)
        live = torch.tensor([0, 2, 3, 4] if len(flip) % 2 else [0, 1, 2, 3, 4, 5])
        x_call = (x.detach() * torch.isin(torch.arange(6), live).to(x.dtype).view(
            (1, 1, -1) if layer.geometry is None else (1, -1) + (1,) * layer.geometry.ndim)
                  ).requires_grad_()
        y_dense, g_dense = run(layer.dense, x_call, layer.params())
        y_sparse, g_sparse = run(lambda t: layer.sparse(t, live, True, True), x_call,
                                 layer.params())
        _assert_close(y_sparse, y_dense, f"output after flipping {flip}")
        for name in g_dense:
            _assert_close(g_sparse[name], g_dense[name], f"gradient of {name} after {flip}")


# ------------------------------------------------------- when leaving a flag off is exact
ZERO_GRAD_AT_ZERO = {"relu": nn.ReLU(), "relu6": nn.ReLU6()}
PASSES_GRAD_AT_ZERO = {"identity": nn.Identity(), "leaky_relu": nn.LeakyReLU(0.1),
                       "gelu": nn.GELU(), "silu": nn.SiLU(), "hardtanh": nn.Hardtanh(),
                       "elu": nn.ELU()}


def _chain(producer: MaskedLayer, act1: nn.Module, consumer: MaskedLayer, act2: nn.Module,
           sparse: Optional[Tuple[bool, bool]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """x → producer (dense) → act1 → consumer (dense, or sparse with these flags) → act2."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        h = act1(producer.dense(x))
        if sparse is None:
            return act2(consumer.dense(h))
        _, _, live = producer.masked()
        return act2(consumer.sparse(h, live, *sparse))
    return forward


def _chain_grads(consumer_kind: str, act1: nn.Module, act2: nn.Module,
                 flags: Optional[Tuple[bool, bool]]) -> Dict[str, torch.Tensor]:
    producer, x = _layer_and_input("linear" if consumer_kind == "linear" else
                                   f"conv{consumer_kind[-2:]}", kept=(1, 2, 4), live=range(6),
                                   seed=11)
    consumer, _ = _layer_and_input(consumer_kind, kept=(0, 1, 4), live=range(6), seed=12)
    params = {f"producer.{k}": v for k, v in producer.params().items()}
    params.update({f"consumer.{k}": v for k, v in consumer.params().items()})
    return run(_chain(producer, act1, consumer, act2, flags), x, params)[1]


@pytest.mark.parametrize("consumer", ("conv2d", "conv1d", "linear", "depthwise2d"))
@pytest.mark.parametrize("act", list(ZERO_GRAD_AT_ZERO))
def test_flags_off_are_exact_when_relu_follows_both_layers(consumer, act):
    """ReLU / ReLU6 backward is 0 at an input of exactly 0, so the pruned rows' mask
    gradient and the dead inputs' gradient are unobservable: every parameter gradient of
    both layers (and the network input's) equals the dense chain's."""
    relu = ZERO_GRAD_AT_ZERO[act]
    dense = _chain_grads(consumer, relu, relu, None)
    sparse = _chain_grads(consumer, relu, relu, (False, False))
    for name in dense:
        _assert_close(sparse[name], dense[name], f"gradient of {name}")


@pytest.mark.parametrize("consumer", ("conv2d", "conv1d", "linear", "depthwise2d"))
@pytest.mark.parametrize("act", list(PASSES_GRAD_AT_ZERO))
def test_grad_pruned_rows_is_needed_when_the_next_op_passes_gradient_at_zero(consumer, act):
    """LeakyReLU, GELU, SiLU, Hardtanh(-1, 1), ELU, nothing: gy of a pruned channel is not
    0, its α gradient Σ gy·z is not either; grad_pruned_rows=False would lose it."""
    relu, act2 = nn.ReLU(), PASSES_GRAD_AT_ZERO[act]
    dense = _chain_grads(consumer, relu, act2, None)
    without = _chain_grads(consumer, relu, act2, (False, False))
    with_flag = _chain_grads(consumer, relu, act2, (True, False))
    pruned = [2, 3, 5]
    assert not torch.allclose(without["consumer.alpha"][pruned], dense["consumer.alpha"][pruned])
    for name in dense:
        _assert_close(with_flag[name], dense[name], f"gradient of {name}")


@pytest.mark.parametrize("consumer", ("conv2d", "conv1d", "linear"))
@pytest.mark.parametrize("act", list(PASSES_GRAD_AT_ZERO))
def test_grad_dead_inputs_is_needed_when_the_op_before_passes_gradient_at_zero(consumer, act):
    """Between the producer and the layer, an op whose backward is not 0 at 0 carries the
    dead inputs' gradient to the producer's pruned rows (its α): grad_dead_inputs=False
    would lose it. A depthwise layer needs no flag (its gx outside K is exactly 0)."""
    act1, relu = PASSES_GRAD_AT_ZERO[act], nn.ReLU()
    dense = _chain_grads(consumer, act1, relu, None)
    without = _chain_grads(consumer, act1, relu, (False, False))
    with_flag = _chain_grads(consumer, act1, relu, (False, True))
    pruned = [0, 3, 5]
    assert not torch.allclose(without["producer.alpha"][pruned], dense["producer.alpha"][pruned])
    for name in dense:
        _assert_close(with_flag[name], dense[name], f"gradient of {name}")


@pytest.mark.parametrize("act", list(PASSES_GRAD_AT_ZERO))
def test_depthwise_needs_no_grad_dead_inputs(act):
    relu = nn.ReLU()
    dense = _chain_grads("depthwise2d", PASSES_GRAD_AT_ZERO[act], relu, None)
    sparse = _chain_grads("depthwise2d", PASSES_GRAD_AT_ZERO[act], relu, (False, False))
    for name in dense:
        _assert_close(sparse[name], dense[name], f"gradient of {name}")


# ------------------------------------------------------------------ saved bytes, errors
def _saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``forward`` runs."""
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


def test_saved_bytes_shrink_with_the_live_inputs():
    """Half the input channels live: half the input is saved (plus the small weight); all
    live: the input itself is saved, as by the dense conv."""
    layer, x = _layer_and_input("conv2d", kept=(0, 1, 2), live=(0, 2, 4))
    x = x.detach().repeat(1, 1, 4, 4)  # input bytes dominate the weight's
    w, b, kept = (t.detach() for t in layer.masked())
    w.requires_grad_()
    geometry = layer.geometry
    dense = _saved_bytes(lambda: reference_conv(x, w, b, geometry))
    half = _saved_bytes(lambda: sparse_masked_conv(x, w, b, geometry, kept, torch.tensor([0, 2, 4]),
                                                   grad_pruned_rows=False, grad_dead_inputs=False))
    full = _saved_bytes(lambda: sparse_masked_conv(x, w, b, geometry, kept, torch.arange(6),
                                                   grad_pruned_rows=False, grad_dead_inputs=False))
    x_bytes = x.numel() * x.element_size()
    assert dense >= x_bytes and full <= dense + w.numel() * w.element_size()
    assert x_bytes // 2 <= half <= x_bytes // 2 + w.numel() * w.element_size()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_keeping_the_full_input_or_a_shared_gathered_copy_changes_no_value(kind, channels_last):
    """keep_full_input saves x itself (gathered again in backward); gathered_input is a copy
    the caller made of the channels the forward reads (the kept ones of a depthwise conv), in
    any layout: values and gradients are those of the plain call."""
    layer, x = _layer_and_input(kind, kept=(0, 2, 5), live=(1, 2, 4))
    live = None if layer.depthwise else torch.tensor([1, 2, 4])
    dim = -1 if layer.geometry is None else 1
    read = layer.masked()[2] if layer.depthwise else live
    gathered = x.detach().index_select(dim, read)
    if channels_last and gathered.dim() == 4:
        gathered = gathered.contiguous(memory_format=torch.channels_last)
    plain = run(lambda t: layer.sparse(t, live, True, True), x, layer.params())

    def variant(t: torch.Tensor) -> torch.Tensor:
        w, b, kept = layer.masked()
        return sparse_masked_conv(t, w, b, layer.geometry, kept, live, grad_pruned_rows=True,
                                  grad_dead_inputs=True, keep_full_input=True, gathered_input=gathered)

    got = run(variant, x, layer.params())
    _assert_close(got[0], plain[0], "output")
    for name in plain[1]:
        _assert_close(got[1][name], plain[1][name], f"gradient of {name}")


def test_keep_full_input_saves_the_input_itself():
    layer, x = _layer_and_input("conv2d", kept=(0, 1, 2), live=(0, 2, 4))
    x = x.detach().repeat(1, 1, 4, 4)
    w, b, kept = (t.detach() for t in layer.masked())
    w.requires_grad_()
    saved = _saved_bytes(lambda: sparse_masked_conv(x, w, b, layer.geometry, kept, torch.tensor([0, 2, 4]),
                                                    grad_pruned_rows=False, grad_dead_inputs=False,
                                                    keep_full_input=True))
    x_bytes = x.numel() * x.element_size()
    assert x_bytes <= saved <= x_bytes + w.numel() * w.element_size()


def test_bad_input_is_refused_with_a_clear_message():
    layer, x = _layer_and_input("conv2d", kept=(0, 1), live=range(6))
    w, b, kept = layer.masked()
    g = layer.geometry

    def call(**kw):
        args = dict(x=x, weight=w, bias=b, geometry=g, kept_out=kept, live_in=None)
        args.update(kw)
        return sparse_masked_conv(**args, grad_pruned_rows=False, grad_dead_inputs=False)

    with pytest.raises(TypeError, match="kept_out must be a 1-D int64 tensor"):
        call(kept_out=kept.to(torch.int32))
    with pytest.raises(ValueError, match=r"live_in must hold sorted, unique channel indices in \[0, 6\)"):
        call(live_in=torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="kept_out must hold sorted, unique"):
        call(kept_out=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="has 7 indices for 6 channels"):
        call(live_in=torch.arange(7))
    with pytest.raises(ValueError, match="does not match the geometry"):
        call(weight=w[:, :3])
    with pytest.raises(ValueError, match="does not match a 2-D convolution of 6 channels"):
        call(x=x[:, :4])
    grouped = ConvGeometry(2, 6, 6, 2, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), True)
    with pytest.raises(ValueError, match="only groups=1 and depthwise"):
        call(geometry=grouped, weight=w[:, :3])
    with pytest.raises(ValueError, match="Linear layer"):
        call(geometry=None)


@pytest.mark.parametrize("kind", ("conv1d", "conv2d", "linear"))
@pytest.mark.parametrize("kept, live", [((0, 2, 3), (1, 2, 4)), ((0, 1, 2, 3, 4, 5), (0, 3)), ((1,), KEEP_ALL)])
def test_a_compact_weight_block_gives_the_values_and_the_block_of_the_gradients(kind, kept, live):
    """A caller passing only the block (kept rows, live columns) of the weight gets the dense
    output and input gradient, and the weight and bias gradients of that block."""
    layer, x = _layer_and_input(kind, kept, live)
    kept_idx, live_idx = torch.tensor(kept), torch.tensor(live)
    in_channels = x.shape[-1] if layer.geometry is None else layer.geometry.in_channels
    plan = sparse_plan(layer.geometry, 6, in_channels, kept_idx, live_idx, grad_pruned_rows=False,
                       grad_dead_inputs=False, device=x.device)
    assert plan.takes_compact_weight

    def compact(t: torch.Tensor) -> torch.Tensor:
        w, b, _ = layer.masked()
        block = w.index_select(0, kept_idx).index_select(1, live_idx)
        return run_sparse_plan(plan, t, block, b.index_select(0, kept_idx), compact_weight=True)

    y_dense, g_dense = run(lambda t: layer.sparse(t, live_idx, False, False), x, layer.params())
    y_block, g_block = run(compact, x, layer.params())
    _assert_close(y_block, y_dense, "output")
    for name in g_dense:
        _assert_close(g_block[name], g_dense[name], f"gradient of {name}")


def test_a_compact_weight_block_is_refused_where_a_computation_needs_the_whole_weight():
    layer, x = _layer_and_input("conv2d", kept=(0, 2), live=(1, 2))
    w, b, kept = layer.masked()
    plan = sparse_plan(layer.geometry, 6, 6, kept, torch.tensor([1, 2]), grad_pruned_rows=True,
                       grad_dead_inputs=False, device=x.device)
    assert not plan.takes_compact_weight
    with pytest.raises(ValueError, match="compact_weight needs a plan"):
        run_sparse_plan(plan, x, w[kept][:, [1, 2]], b[kept], compact_weight=True)
    plan = sparse_plan(layer.geometry, 6, 6, kept, torch.tensor([1, 2]), grad_pruned_rows=False,
                       grad_dead_inputs=False, device=x.device)
    with pytest.raises(ValueError, match="the compact block of kept rows and live columns"):
        run_sparse_plan(plan, x, w, b, compact_weight=True)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_geometry_of_a_same_padded_even_kernel():
    """'same' padding of an even kernel is asymmetric: read from an nn.Conv2d."""
    conv = nn.Conv2d(5, 4, (2, 4), padding="same", dilation=(1, 2)).double()
    geometry, _ = conv_geometry(conv)
    assert geometry.pad_left != geometry.pad_right
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    x[:, 3] = 0
    x.requires_grad_()
    kept, live = torch.tensor([0, 2, 3]), torch.tensor([0, 1, 2, 4])
    w = conv.weight.detach().clone()
    w[[1]] = 0
    b = conv.bias.detach().clone()
    b[[1]] = 0
    w.requires_grad_()
    b.requires_grad_()
    y_dense, g_dense = run(lambda t: F.conv2d(t, w, b, padding="same", dilation=(1, 2)), x,
                           {"w": w, "b": b})
    y_sparse, g_sparse = run(lambda t: sparse_masked_conv(t, w, b, geometry, kept, live,
                                                          grad_pruned_rows=True,
                                                          grad_dead_inputs=True),
                             x, {"w": w, "b": b})
    _assert_close(y_sparse, y_dense, "output")
    for name in g_dense:
        _assert_close(g_sparse[name], g_dense[name], f"gradient of {name}")


# ------------------------------------------------------------------ the decision rule
def _conv(cin: int, cout: int, kernel: int, groups: int = 1) -> ConvGeometry:
    pad = (kernel - 1) // 2
    return ConvGeometry(2, cin, cout, groups, (kernel, kernel), (1, 1), (1, 1), (pad, pad),
                        (pad, pad), False)


def test_work_left_counts_each_of_the_three_convolutions():
    work = LayerWork(_conv(4, 4, 3), 4, 4, positions=10)
    assert work.dense_macs() == 3 * 10 * 4 * 4 * 9
    assert work.fraction_left(2, 2, False, False) == pytest.approx(12 / 48)
    assert work.fraction_left(2, 2, True, False) == pytest.approx(16 / 48)   # gW' all rows
    assert work.fraction_left(2, 2, False, True) == pytest.approx(16 / 48)   # gx all inputs
    assert work.fraction_left(4, 4, True, True) == 1.0
    depthwise = LayerWork(_conv(8, 8, 3, groups=8), 8, 8, positions=10)
    assert depthwise.dense_macs() == 3 * 10 * 8 * 9
    assert depthwise.fraction_left(2, 6, True, False) == pytest.approx((4 + 6) / 24)
    no_input_grad = LayerWork(_conv(4, 4, 3), 4, 4, positions=10, input_grad=False)
    assert no_input_grad.dense_macs() == 2 * 10 * 4 * 4 * 9
    assert no_input_grad.fraction_left(2, 2, True, True) == pytest.approx((4 + 8) / 32)
    forward_only = LayerWork(_conv(4, 4, 3), 4, 4, positions=10, backward=False)
    assert forward_only.dense_macs() == 10 * 4 * 4 * 9
    assert forward_only.fraction_left(2, 3, True, True) == pytest.approx(6 / 16)
    assert LayerWork(_conv(8, 8, 3, groups=8), 8, 8, 10, backward=False).fraction_left(2, 6, True, True) == 2 / 8


@pytest.mark.parametrize("geometry, cin, cout, positions, kept, live, rows, expected", [
    (_conv(32, 32, 3), 32, 32, 32 * 64 * 64, 16, 16, True, True),    # seed, 50 % pruned
    (_conv(32, 32, 3), 32, 32, 32 * 64 * 64, 24, 24, False, False),  # seed, 25 %: 24 channels
    (_conv(64, 64, 5), 64, 64, 32 * 25 * 5, 48, 48, True, True),     # DS-CNN conv, 25 %
    (_conv(64, 64, 5), 64, 64, 32 * 25 * 5, 64, 64, False, False),   # nothing pruned
    (_conv(64, 64, 1), 64, 64, 32 * 25 * 5, 16, 16, False, True),    # pointwise, 75 %
    (_conv(64, 64, 1), 64, 64, 32 * 25 * 5, 32, 32, False, False),   # pointwise, 50 %
    (_conv(16, 16, 1), 16, 16, 32 * 32 * 32, 4, 4, False, False),    # pointwise, 4 left
    (_conv(64, 64, 3, 64), 64, 64, 32 * 25 * 5, 16, 16, False, False),  # depthwise
    (None, 64, 12, 32, 3, 16, False, False),                          # tiny Linear
])
def test_sparse_pays_follows_the_measured_rule(geometry, cin, cout, positions, kept, live, rows,
                                               expected):
    work = LayerWork(geometry, cin, cout, positions)
    assert sparse_pays(work, kept, live, rows, False) is expected


def test_the_benchmark_prints_one_row_per_pruned_fraction(capsys):
    from bench.bench_sparse_conv import main

    threads = torch.get_num_threads()
    try:
        main(["--threads", "1", "--repeats", "1", "--min-ms", "0", "--batch", "2",
              "--only", "linear"])
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| dscnn | linear")]
    assert [row.split("|")[3].strip() for row in rows] == ["0%", "25%", "50%", "75%"]
    assert all(row.rstrip(" |").endswith("D / D") for row in rows)  # tiny: dense


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_values_and_gradients_without_a_host_sync(kind):
    """On CUDA the op matches the dense layer and never waits for the device: the index sets
    are built once per step on the host, so nothing in the op needs a device value."""
    layer, x = _layer_and_input(kind, kept=(0, 2, 3), live=(1, 2, 4, 5))
    w, b, kept = (t.detach() for t in layer.masked())
    live = torch.tensor([1, 2, 4, 5])
    device = torch.device("cuda")
    x, w, b = (t.to(device).requires_grad_() for t in (x.detach(), w, b))
    kept, live = kept.to(device), live.to(device)
    y_dense, g_dense = run(lambda t: F.linear(t, w, b) if layer.geometry is None else
                           reference_conv(t, w, b, layer.geometry), x, {"w": w, "b": b})
    cot = torch.randn(y_dense.shape, generator=torch.Generator().manual_seed(7),
                      dtype=y_dense.dtype).to(device)  # run()'s cotangent
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = sparse_masked_conv(x, w, b, layer.geometry, kept, live, grad_pruned_rows=True,
                               grad_dead_inputs=True)
        grads = torch.autograd.grad(y, [x, w, b], cot)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _assert_close(y, y_dense, "output")
    for got, name in zip(grads, ("x", "w", "b")):
        _assert_close(got, g_dense[name], f"gradient of {name}")


# ------------------------------------------------------------------ the direct small convolution
@contextlib.contextmanager
def _direct_decisions() -> Iterator[List[bool]]:
    """Records each decision of ``small_conv.runs_direct`` (True: plinio::small_conv ran)."""
    from plinio.fast import small_conv

    decisions: List[bool] = []
    decide = small_conv.runs_direct

    def spy(*args):
        decisions.append(decide(*args))
        return decisions[-1]

    small_conv.runs_direct = spy
    try:
        yield decisions
    finally:
        small_conv.runs_direct = decide


def _needs_direct_kernel():
    from plinio.fast import small_conv

    if small_conv.channel_limit(2, 1) == 0:
        pytest.skip("plinio::small_conv does not run here (extension not built, or baseline loops only)")


@st.composite
def direct_cases(draw: st.DrawFn) -> Tuple[MaskedLayer, torch.Tensor, torch.Tensor]:
    """Layers whose compact convolutions are small enough for the direct kernel: float32,
    3 to 7 taps per row, rows of 16+ outputs, up to 8 channels of 12 kept/live; stride 1 with
    dilation 1 or 2, or stride 2; groups 1 or depthwise."""
    kind = draw(st.sampled_from(("conv1d", "conv2d", "depthwise2d")))
    kernel, stride = draw(st.integers(3, 7)), draw(st.sampled_from((1, 2)))
    dilation = 1 if stride > 1 else draw(st.integers(1, 2))
    total = dilation * (kernel - 1)
    pad_left = draw(st.integers(-1, total))
    pad_right = draw(st.integers(0, total))
    kept, live = torch.zeros(12, dtype=torch.bool), torch.zeros(12, dtype=torch.bool)
    kept[draw(st.lists(st.integers(0, 11), min_size=1, max_size=8, unique=True))] = True
    live[draw(st.lists(st.integers(0, 11), min_size=1, max_size=8, unique=True))] = True
    seed = draw(st.integers(0, 2 ** 16))
    layer = make_layer(kind, 12, 12, kernel, stride, dilation, pad_left, pad_right, draw(st.booleans()), kept,
                       0, seed, torch.float32)
    size = total + 1 + 15 * stride - pad_left - pad_right + draw(st.integers(0, 20))
    x = make_input(layer, live, draw(st.integers(1, 3)), size, seed)
    return layer, x, torch.nonzero(live).flatten()


@SETTINGS
@given(direct_cases())
def test_compact_convolutions_on_the_direct_kernel_equal_the_dense_layer(case):
    _needs_direct_kernel()
    from plinio.fast import small_conv

    layer, x, live = case
    y_dense, g_dense = run(layer.dense, x, layer.params())
    with _direct_decisions() as decisions:
        for flags in ((True, True), (False, False)):
            y_sparse, g_sparse = run(lambda t: layer.sparse(t, live, *flags), x, layer.params())
            _assert_close(y_sparse, y_dense, "output")
            if flags == (True, True):
                for name in g_dense:
                    _assert_close(g_sparse[name], g_dense[name], f"gradient of {name}")
    kept = int((layer.alpha.detach().abs() > 0.5).sum())
    limit = small_conv.channel_limit(x.dim() - 2, torch.get_num_threads(), small_conv.kind(layer.geometry))
    if max(kept, live.numel()) <= limit:
        assert any(decisions), "the direct kernel should have run"


@pytest.mark.parametrize("kind, stride", [("conv2d", 1), ("conv2d", 2), ("depthwise2d", 1), ("depthwise2d", 2)])
def test_direct_kernel_runs_where_the_rule_says_and_gives_the_aten_path_values(monkeypatch, kind, stride):
    _needs_direct_kernel()
    from plinio.fast import small_conv

    kept = torch.zeros(16, dtype=torch.bool)
    kept[[1, 6, 9, 14]] = True
    live = torch.zeros(16, dtype=torch.bool)
    live[[0, 3, 6, 7]] = True
    layer = make_layer(kind, 16, 16, 5, stride, 1, 2, 2, True, kept, 0, 5, torch.float32)
    if small_conv.channel_limit(2, torch.get_num_threads(), small_conv.kind(layer.geometry)) < 4:
        pytest.skip(f"the direct kernel does not take 4-channel {kind} convolutions of stride {stride} here")
    x = make_input(layer, live, 4, 32, 5)
    live_idx = torch.nonzero(live).flatten()
    with _direct_decisions() as decisions:
        got, got_grads = run(lambda t: layer.sparse(t, live_idx, False, False), x, layer.params())
    assert decisions and all(decisions)  # forward, input and weight gradient: 4 channels
    monkeypatch.setattr(small_conv, "channel_limit", lambda ndim, threads, kind: 0)
    with _direct_decisions() as decisions:
        want, want_grads = run(lambda t: layer.sparse(t, live_idx, False, False), x, layer.params())
    assert decisions and not any(decisions)
    _assert_close(got, want, "output")
    for name in want_grads:
        _assert_close(got_grads[name], want_grads[name], f"gradient of {name}")


@pytest.mark.parametrize("change, fits", [
    ({}, True), ({"stride": (2, 2)}, False), ({"stride": (1, 2)}, True), ({"groups": 8}, True),
    ({"groups": 2}, False), ({"kernel": (1, 1)}, False), ({"kernel": (3, 8)}, False), ({"kernel": (3, 2)}, False),
    ({"kernel": (9, 3)}, True), ({"ndim": 3}, False)])
def test_geometries_the_direct_kernel_takes(change, fits):
    from plinio.fast import small_conv

    # dilation (2, 1): stride 2 is taken in the second dimension only
    fields = dict(ndim=2, in_channels=8, out_channels=8, groups=1, kernel=(5, 5), stride=(1, 1),
                  dilation=(2, 1), pad_left=(3, 0), pad_right=(1, 4), has_bias=True)
    assert small_conv.geometry_fits(ConvGeometry(**{**fields, **change})) is fits


def _geometry(ndim: int, channels: int, stride: int = 1, groups: int = 1) -> ConvGeometry:
    return ConvGeometry(ndim, channels, channels, groups, (3,) * ndim, (stride,) * ndim, (1,) * ndim,
                        (1,) * ndim, (1,) * ndim, False)


def test_sizes_and_tensors_the_direct_kernel_takes(monkeypatch):
    from plinio.fast import small_conv

    monkeypatch.setattr(small_conv, "loops_isa", lambda: "avx512")
    t = torch.empty(1, 1, 1, 1)
    conv2d, conv1d = _geometry(2, 16), _geometry(1, 16)
    assert small_conv.runs_direct(t, conv2d, 8, 3, 16)
    assert not small_conv.runs_direct(t, conv2d, 9, 3, 16)    # too many channels
    assert not small_conv.runs_direct(t, conv2d, 4, 4, 15)    # rows too short
    assert not small_conv.runs_direct(t.double(), conv2d, 4, 4, 32)
    assert not small_conv.runs_direct(t.to(torch.bfloat16), conv2d, 4, 4, 32)
    assert small_conv.runs_direct(t, _geometry(2, 16, stride=2), 4, 8, 16)
    assert not small_conv.runs_direct(t, _geometry(2, 16, stride=2), 8, 16, 16)
    depthwise = _geometry(2, 16, groups=16)
    assert small_conv.runs_direct(t, depthwise, 4, 4, 32) and not small_conv.runs_direct(t, depthwise, 8, 8, 32)
    assert not small_conv.runs_direct(torch.empty(1, 1, 1), _geometry(1, 16, groups=16), 4, 4, 32)  # not measured
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # 1-D: 16 channels only where a second thread speeds it up
        assert not small_conv.runs_direct(torch.empty(1, 1, 1), conv1d, 16, 16, 128)
        torch.set_num_threads(2)
        assert small_conv.runs_direct(torch.empty(1, 1, 1), conv1d, 16, 16, 128)
        assert not small_conv.runs_direct(t, conv2d, 16, 16, 128)
    finally:
        torch.set_num_threads(threads)
    assert small_conv.channel_limit(2, 1) == 8
    monkeypatch.setattr(small_conv, "loops_isa", lambda: "avx2")
    assert (small_conv.channel_limit(2, 2), small_conv.channel_limit(1, 1)) == (4, 8)
    # AVX2: strided and depthwise convolutions not faster than oneDNN's
    assert small_conv.channel_limit(2, 1, "strided") == small_conv.channel_limit(2, 1, "depthwise") == 0
    for isa in ("base", "none"):
        monkeypatch.setattr(small_conv, "loops_isa", lambda: isa)
        assert not small_conv.runs_direct(t, conv2d, 1, 1, 64)


def test_the_small_conv_benchmark_prints_one_row_per_size(capsys):
    _needs_direct_kernel()
    from bench.bench_small_conv import SHAPES, main

    threads = torch.get_num_threads()
    try:
        main(["--threads", "1", "--repeats", "1", "--batch", "2"])
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(SHAPES) + 1  # the header and one row per size


# ------------------------------------------------------------------ compact layers: plinio::compact_conv
def _needs_native_op():
    from plinio.fast.sparse_conv import native_compact_conv

    if not native_compact_conv():
        pytest.skip("plinio::compact_conv is not available (extension not built)")


@contextlib.contextmanager
def _native(on: bool) -> Iterator[None]:
    """Plans made inside run plinio::compact_conv (on) or the Python autograd function."""
    from plinio.fast import sparse_conv

    available = sparse_conv.native_compact_conv
    sparse_conv.native_compact_conv = (lambda: on) if not on else available
    try:
        yield
    finally:
        sparse_conv.native_compact_conv = available


def _compact_call(layer: MaskedLayer, x: torch.Tensor, live: torch.Tensor, native: bool,
                  compact_weight: bool = False, with_mask: bool = False
                  ) -> Tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """(the compact layer as a function of its compact input, that input): the input holds the
    live channels (the kept ones for a depthwise layer), the output the kept rows.
    ``with_mask``: the op convolves the unmasked weight and takes α (``mask`` of run_sparse_plan)."""
    _, _, kept = layer.masked()
    g = layer.geometry
    with _native(native):
        plan = sparse_plan(g, g.out_channels, g.in_channels, kept, live, grad_pruned_rows=False,
                           grad_dead_inputs=False, device=x.device, compact_in=True, compact_out=True)
    assert plan.native == native

    def forward(t: torch.Tensor) -> torch.Tensor:
        if with_mask:
            return run_sparse_plan(plan, t, layer.weight, layer.bias, mask=(layer.alpha, layer.keep_alive))
        w, b, _ = layer.masked()
        if compact_weight:
            w = w.index_select(0, kept).index_select(1, live)
            b = None if b is None else b.index_select(0, kept)
        return run_sparse_plan(plan, t, w, b, compact_weight=compact_weight)

    read = kept if layer.depthwise else live
    return forward, x.detach().index_select(1, read).requires_grad_()


def _layout(t: torch.Tensor) -> Tuple[int, ...]:
    """The strides that matter: of the dimensions longer than 1 (none for an empty tensor)."""
    return () if t.numel() == 0 else tuple(s for s, n in zip(t.stride(), t.shape) if n > 1)


@st.composite
def compact_cases(draw: st.DrawFn) -> Tuple[MaskedLayer, torch.Tensor, torch.Tensor]:
    """random_cases of convolutions, half of them with channel counts and row lengths the
    direct kernel takes (float32, 3 to 7 taps)."""
    if draw(st.booleans()):
        return draw(direct_cases())
    layer, x, live = draw(random_cases())
    assume(layer.geometry is not None)
    return layer, x, live


@SETTINGS
@given(compact_cases())
def test_the_native_compact_conv_gives_the_values_layouts_and_gradients_of_the_python_path(case):
    """plinio::compact_conv (the whole compact layer in C++) against the Python autograd
    function it replaces, and both against the dense layer on the kept rows and live inputs:
    1-D (lifted) and 2-D, depthwise, any padding (negative too), strides, dilations, empty
    channel sets, float64, the direct kernel and aten's. With channels on both sides, the
    input gradient has the compact layout (a contiguous one, from a strided 1×1 convolution,
    made every op after it in the backward mix layouts, several times slower)."""
    _needs_native_op()
    layer, x, live = case
    results = {}
    for native in (True, False):
        forward, x_compact = _compact_call(layer, x, live, native)
        results[native] = (_layout(x_compact),) + run(forward, x_compact, layer.params())
        if x_compact.shape[1] and results[native][1].shape[1]:
            assert _layout(results[native][2]["x"]) == _layout(compact_layout(x_compact)), f"native={native}"
    (stride, y, grads), (stride_py, y_py, grads_py) = results[True], results[False]
    assert stride == stride_py and _layout(y) == _layout(y_py)
    _assert_close(y, y_py, "output")
    for name in grads_py:
        _assert_close(grads[name], grads_py[name], f"gradient of {name}")
        assert grads[name].shape == grads_py[name].shape
    _, _, kept = layer.masked()
    _assert_close(y, layer.dense(x).index_select(1, kept), "output against the dense layer")


@pytest.mark.parametrize("native", (True, False))
@pytest.mark.parametrize("ndim", (1, 2))
def test_a_strided_pointwise_compact_conv_gives_its_input_gradient_in_the_compact_layout(ndim, native):
    """A strided 1×1 convolution reads its input's samples and scatters their gradient into a
    zero tensor: that tensor has the compact layout too (it was contiguous in the native op,
    and the adds and ReLU backwards after it ran 10-30× slower on the mixed layouts)."""
    if native:
        _needs_native_op()
    g = ConvGeometry(ndim=ndim, in_channels=6, out_channels=6, groups=1, kernel=(1,) * ndim, stride=(2,) * ndim,
                     dilation=(1,) * ndim, pad_left=(0,) * ndim, pad_right=(0,) * ndim, has_bias=True)
    gen = torch.Generator().manual_seed(0)
    layer = MaskedLayer(geometry=g, weight=torch.randn((6, 6) + (1,) * ndim, generator=gen, requires_grad=True),
                        bias=torch.randn(6, generator=gen, requires_grad=True),
                        alpha=torch.tensor([1.0, 0.1, 1.0, 1.0, 0.1, 1.0], requires_grad=True), beta=None, gamma=None,
                        keep_alive=0)
    x = torch.randn((4, 6) + (9,) * ndim, generator=gen)
    forward, x_compact = _compact_call(layer, x, torch.tensor([0, 2, 3]), native)
    _, grads = run(forward, compact_layout(x_compact).detach().requires_grad_(), layer.params())
    assert _layout(grads["x"]) == _layout(compact_layout(x_compact))


@SETTINGS
@given(compact_cases())
def test_a_whole_dense_input_without_gradient_runs_the_native_op_like_the_python_path(case):
    """A layer that reads every channel of a dense input needing no gradient (a network's
    input) into a compact output runs plinio::compact_conv as well, on the input or on the
    caller's copy of it in the kernels' layout: the values, layouts and parameter gradients of
    the Python autograd function, and the dense layer's values on the kept rows. With an input
    that needs a gradient, the same plan runs the native op where the input is channels_last
    (the input gradient's layout and values are then the Python path's) and the Python path
    otherwise."""
    _needs_native_op()
    layer, x, _ = case
    assume(not layer.depthwise)
    g = layer.geometry
    _, _, kept = layer.masked()
    x = x.detach()
    results = {}
    for native in (True, False):
        with _native(native):
            plan = sparse_plan(g, g.out_channels, g.in_channels, kept, None, grad_pruned_rows=False,
                               grad_dead_inputs=False, device=x.device, compact_out=True)
        assert plan.native == native and plan.reads_whole_input
        for gathered in (None, compact_layout(x)):
            w, b, _ = layer.masked()
            y = run_sparse_plan(plan, x, w, b, gathered_input=gathered)
            assert (type(y.grad_fn).__name__ == "_SparseMaskedConvBackward") != native
            names = list(layer.params())
            cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
            grads = torch.autograd.grad(y, [layer.params()[n] for n in names], cot)
            results[native, gathered is None] = (y, dict(zip(names, grads)))
    for whole in (True, False):
        (y, grads), (y_py, grads_py) = results[True, whole], results[False, whole]
        assert _layout(y) == _layout(y_py)
        _assert_close(y, y_py, "output")
        for name in grads_py:
            _assert_close(grads[name], grads_py[name], f"gradient of {name}")
        _assert_close(y, layer.dense(x).index_select(1, kept), "output against the dense layer")
    with _native(True):
        plan = sparse_plan(g, g.out_channels, g.in_channels, kept, None, grad_pruned_rows=False,
                           grad_dead_inputs=False, device=x.device, compact_out=True)
    outputs = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        if layout == torch.channels_last and x.dim() != 4:
            continue
        x_grad = x.contiguous(memory_format=layout).requires_grad_()
        if layout == torch.channels_last and x_grad.is_contiguous():  # one channel or one position
            continue
        for native in (True, False):
            with _native(native):
                plan = sparse_plan(g, g.out_channels, g.in_channels, kept, None, grad_pruned_rows=False,
                                   grad_dead_inputs=False, device=x.device, compact_out=True)
            w, b, _ = layer.masked()
            y = run_sparse_plan(plan, x_grad, w, b)
            python = type(y.grad_fn).__name__ == "_SparseMaskedConvBackward"
            assert python == (not native or layout == torch.contiguous_format)
            cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=y.dtype)
            outputs[native] = (y,) + torch.autograd.grad(y, [x_grad, w], cot)
        if layout == torch.channels_last:
            for got, want in zip(outputs[True], outputs[False]):
                assert _layout(got) == _layout(want)
                _assert_close(got, want, "native against Python path, channels_last input with gradient")


@pytest.mark.parametrize("live", [(0, 1, 2, 3, 4, 5), (1, 2, 4), ()])
@pytest.mark.parametrize("compact_weight", [False, True])
def test_a_linear_from_a_compact_input_to_every_row_is_the_column_block(live, compact_weight):
    """A Linear reading a compact input into every output row (a classifier after pruned
    features) runs F.linear with the weight's column block through autograd: the values and
    gradients of the Python autograd function, and the dense layer's."""
    layer, x = _layer_and_input("linear", kept=KEEP_ALL, live=live)
    live_idx = torch.tensor(live, dtype=torch.int64)
    plan = sparse_plan(None, 6, 6, None, live_idx, grad_pruned_rows=False, grad_dead_inputs=False,
                       device=x.device, compact_in=True)
    assert plan.column_block
    x_compact = x.detach().index_select(-1, live_idx).requires_grad_()

    def block(w: torch.Tensor) -> torch.Tensor:
        return w.index_select(1, live_idx) if compact_weight else w

    def column_block(t: torch.Tensor) -> torch.Tensor:
        w, b, _ = layer.masked()
        return run_sparse_plan(plan, t, block(w), b, compact_weight=compact_weight)

    def python_path(t: torch.Tensor) -> torch.Tensor:
        w, b, _ = layer.masked()
        return _SparseMaskedConv.apply(t, block(w), b, plan, False, None, compact_weight)

    y, grads = run(column_block, x_compact, layer.params())
    y_py, grads_py = run(python_path, x_compact, layer.params())
    y_dense, grads_dense = run(layer.dense, x, layer.params())
    _assert_close(y, y_py, "output")
    _assert_close(y, y_dense, "output against the dense layer")
    for name in grads_py:
        _assert_close(grads[name], grads_py[name], f"gradient of {name}")
        if name != "x":
            _assert_close(grads[name], grads_dense[name], f"gradient of {name} against the dense layer")
    _assert_close(grads["x"], grads_dense["x"].index_select(-1, live_idx), "gradient of the compact input")


@pytest.mark.parametrize("kind", ("conv1d", "conv2d", "depthwise2d"))
def test_the_native_compact_conv_equals_the_dense_layer_and_takes_a_compact_weight_block(kind):
    """Gradients of every parameter equal the dense layer's when the pruned rows receive no
    gradient (as when a ReLU follows), the input's on the channels the layer reads; a compact
    weight block gives the same."""
    _needs_native_op()
    layer, x = _layer_and_input(kind, kept=(0, 2, 3), live=(1, 2, 4, 5))
    live = torch.tensor([1, 2, 4, 5])
    _, _, kept = layer.masked()
    y_dense, g_dense = run(lambda t: layer.dense(t).index_select(1, kept), x, layer.params())
    forward, x_compact = _compact_call(layer, x, live, native=True)
    y, grads = run(forward, x_compact, layer.params())
    _assert_close(y, y_dense, "output")
    for name in layer.params():
        _assert_close(grads[name], g_dense[name], f"gradient of {name}")
    read = kept if layer.depthwise else live
    _assert_close(grads["x"], g_dense["x"].index_select(1, read), "gradient of the compact input")
    if layer.depthwise:
        return
    block, x_block = _compact_call(layer, x, live, native=True, compact_weight=True)
    y_block, grads_block = run(block, x_block, layer.params())
    _assert_close(y_block, y, "output with a compact weight block")
    for name in layer.params():
        _assert_close(grads_block[name], grads[name], f"gradient of {name} with a compact weight block")


@pytest.mark.parametrize("kind, keep_alive, bias", [("conv2d", 0, True), ("conv2d", 2, False),
                                                   ("depthwise2d", 1, True), ("conv1d", 1, True)])
def test_the_native_compact_conv_given_the_mask_gives_alpha_the_gradient_of_the_masked_weight(kind, keep_alive,
                                                                                              bias):
    """With α, the op convolves the layer's unmasked weight and gives the input, the weight,
    the bias and α the gradients of the masked-weight path (pit_masked_weight, then the op):
    α of both signs, keep-alive rows (gradient 0), pruned rows (gradient 0)."""
    _needs_native_op()
    layer, x = _layer_and_input(kind, kept=(0, 2, 3), live=(1, 2, 4, 5), keep_alive=keep_alive, bias=bias)
    layer.beta = layer.gamma = None  # the channel mask only
    with torch.no_grad():  # both signs (the kept set depends on |α| only)
        layer.alpha.abs_()[::2] *= -1
    live = torch.tensor([1, 2, 4, 5])
    masked, x_compact = _compact_call(layer, x, live, native=True)
    y_want, g_want = run(masked, x_compact, layer.params())
    unmasked, _ = _compact_call(layer, x, live, native=True, with_mask=True)
    y, grads = run(unmasked, x_compact, layer.params())
    _assert_close(y, y_want, "output")
    for name in g_want:
        _assert_close(grads[name], g_want[name], f"gradient of {name}")
    _, _, kept = layer.masked()
    pruned = torch.ones(6, dtype=torch.bool)
    pruned[kept] = False
    assert grads["alpha"][pruned].abs().max() == 0
    if keep_alive:
        assert grads["alpha"][-keep_alive:].abs().max() == 0
    assert grads["alpha"][kept[:1]].abs().max() > 0


def test_the_native_compact_conv_refuses_a_double_backward_and_runs_in_inference_mode():
    _needs_native_op()
    layer, x = _layer_and_input("conv2d", kept=(0, 2), live=(1, 2, 4))
    forward, x_compact = _compact_call(layer, x, torch.tensor([1, 2, 4]), native=True)
    y = forward(x_compact)
    with pytest.raises(RuntimeError, match=r"double backward.*sparse=False"):
        torch.autograd.grad(y.square().sum(), x_compact, create_graph=True)
    with torch.inference_mode():
        got = forward(x_compact.detach())
    _assert_close(got, y.detach(), "output in inference mode")


def test_the_native_compact_conv_names_itself_on_bad_input():
    _needs_native_op()
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 6, 3, 3)
    rows, cols = torch.tensor([0, 2]), torch.tensor([1, 2, 5])
    op = torch.ops.plinio.compact_conv.default
    args = ([1, 1], [1, 1], [1, 1], [1, 1], False, False)
    with pytest.raises(RuntimeError, match=r"compact_conv: the input has 3 channels but the weight block reads 2"):
        op(x, w, None, rows, cols[:2], *args)
    with pytest.raises(RuntimeError, match=r"plinio::compact_conv: cols must be a 1-D int64 tensor"):
        op(x, w, None, rows, cols.int(), *args)
    with pytest.raises(RuntimeError, match=r"plinio::compact_conv: a 2-D convolution needs 2 values"):
        op(x, w, None, rows, cols, [1], [1, 1], [1, 1], [1, 1], False, False)
    with pytest.raises(RuntimeError, match=r"plinio::compact_conv: a bias of shape \[3\] does not match 4"):
        op(x, w, torch.randn(3), rows, cols, *args)
    with pytest.raises(RuntimeError, match=r"plinio::compact_conv: alpha must be the 1-D channel-mask parameter "
                                           r"of the 4 output channels, got shape \[6\]"):
        op(x, w, None, rows, cols, *args, torch.randn(6), 1)
    with pytest.raises(RuntimeError, match=r"plinio::compact_conv: alpha \(Double on cpu\) must have the weight's "
                                           r"dtype"):
        op(x, w, None, rows, cols, *args, torch.randn(4, dtype=torch.float64), 1)
    with pytest.raises(RuntimeError, match=r"plinio::compact_conv: keep_alive must be in \[0, 4\], got 5"):
        op(x, w, None, rows, cols, *args, torch.randn(4), 5)
    layer, xl = _layer_and_input("conv2d", kept=(0, 2), live=(1, 2, 4))
    _, _, kept = layer.masked()
    g = layer.geometry
    plan = sparse_plan(g, g.out_channels, g.in_channels, kept, None, grad_pruned_rows=False, grad_dead_inputs=True,
                       device=xl.device)
    with pytest.raises(ValueError, match=r"an unmasked weight with its mask needs a layer the native op runs whole"):
        run_sparse_plan(plan, xl, layer.weight, layer.bias, mask=(layer.alpha, 0))


@pytest.mark.parametrize("depthwise, direct, ndim", [(False, False, 2), (False, False, 1), (True, False, 2),
                                                     (False, True, 2), (False, True, 1)])
def test_the_native_compact_conv_passes_opcheck(depthwise, direct, ndim):
    """Schema, fake kernel (shapes and strides) and autograd registration of the op."""
    _needs_native_op()
    if direct:
        _needs_direct_kernel()
    gen = torch.Generator().manual_seed(0)
    channels, rows = (5, torch.tensor([0, 3, 4])) if depthwise else (4, torch.tensor([1, 2, 6]))
    cols = None if depthwise else torch.tensor([0, 2, 3, 5])
    spatial = (20,) * ndim
    x = torch.randn((2, 3 if depthwise else 4) + spatial, generator=gen, requires_grad=True)
    w = torch.randn((channels if depthwise else 7, 1 if depthwise else 6) + (3,) * ndim, generator=gen,
                    requires_grad=True)
    b = torch.randn(w.shape[0], generator=gen, requires_grad=True)
    pad = [1] * ndim
    for mask in ((), (torch.randn(w.shape[0], generator=gen, requires_grad=True), 1)):
        torch.library.opcheck(torch.ops.plinio.compact_conv.default,
                              (x, w, b, rows, cols, [1] * ndim, pad, [2] * ndim, [1] * ndim, depthwise, direct)
                              + mask,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ("conv1d", "conv2d", "depthwise2d"))
def test_cuda_native_compact_conv_equals_the_python_path(kind):
    _needs_native_op()
    layer, x = _layer_and_input(kind, kept=(0, 2, 3), live=(1, 2, 4, 5))
    device = torch.device("cuda")
    for t in layer.params().values():
        t.data = t.data.to(device)
    x = x.detach().to(device).requires_grad_()
    live = torch.tensor([1, 2, 4, 5], device=device)
    results = {}
    for native in (True, False):
        forward, x_compact = _compact_call(layer, x, live, native)
        results[native] = run(forward, x_compact, layer.params())
    _assert_close(results[True][0], results[False][0], "output")
    for name, want in results[False][1].items():
        _assert_close(results[True][1][name], want, f"gradient of {name}")
