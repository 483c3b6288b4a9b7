"""Sparse execution inside the search (README "Sparse execution"): the same values and gradients
as the dense fast path (outputs, inputs, weights, α, β, γ and the supernets' α) on random
models and masks (also with every kind of activation, pooling and dropout after the layers,
in-place ops on their outputs, and causal TCNs with their exports), on the benchmark
workloads in soft, hard and Gumbel mode, when masks flip between steps; the switch; one host
transfer per step; dense under torch.compile and autocast; double backward refused;
saved-for-backward bytes."""
import sys
from pathlib import Path
from typing import Iterator, Tuple

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import plinio.fast.sparse_step as sparse_step
import plinio.ops as ops
from plinio.fast.merged_conv import MergedConv
from plinio.methods.pit_supernet import PITSuperNetModule
from bench.models import workloads
from bench.search_step import build_setups, saved_activation_bytes
import op_zoo
from fast_helpers import RUNTIME_INPUT
from sparse_helpers import assert_same, forced_sparse, prune_randomly, results, search_pair, set_softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
import random_models as rm  # noqa: E402  (the reliability tests' model generator)

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def model_specs(draw: st.DrawFn) -> rm.ModelSpec:
    """Random CNNs (1-D with dilations and searched receptive fields, or 2-D) of plain,
    residual (shared masks) and supernet blocks (merged, separate and Identity branches)."""
    dims = draw(st.sampled_from([1, 2]))
    size = draw(st.integers(6, 12)) if dims == 1 else draw(st.integers(3, 6))
    kernels = [1, 3, 4, 5] if dims == 1 else [1, 3]
    channels = in_channels = draw(st.integers(2, 5))
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "residual", "supernet"]))
        dilation = draw(st.sampled_from([1, 2])) if dims == 1 else 1
        if kind == "conv":
            block = rm.BlockSpec("conv", draw(st.integers(3, 8)), draw(st.sampled_from(kernels)), dilation,
                                 draw(st.booleans()), draw(st.booleans()), draw(st.booleans()))
        elif kind == "residual":
            block = rm.BlockSpec("residual", channels, draw(st.sampled_from(kernels)), dilation, draw(st.booleans()))
        else:
            branches = tuple(draw(st.lists(st.sampled_from(rm.BRANCH_KINDS), min_size=1, max_size=3)))
            out = channels if "identity" in branches else draw(st.integers(3, 8))
            block = rm.BlockSpec("supernet", out, branches=branches, gumbel=draw(st.booleans()))
        blocks.append(block)
        channels = rm.block_out_channels(block, channels)
    return rm.ModelSpec(dims, in_channels, size, tuple(blocks))


def tcn_pair(prune: float = 0.0) -> Tuple[nn.Module, nn.Module, Tuple[int, ...]]:
    """The TCN workload searched with and without sparse execution from the same seed, with
    ``prune`` of every searched channel mask below the threshold (the same channels in both);
    also its input shape."""
    workload = workloads()["tcn"]
    torch.manual_seed(0)
    sparse, dense = search_pair(workload.factory(), workload.input_shape)
    if prune:
        prune_randomly((sparse, dense), prune, seed=0)
    return sparse, dense, workload.input_shape


def _randomize(search: nn.Module, seed: int) -> None:
    """α, β, γ around the threshold (channels and taps pruned and kept), random branch α."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in search.named_nas_parameters():
            scale = 1.0 if name.endswith("sn_combiner.alpha") else 1.6
            param.copy_(torch.rand(param.shape, generator=gen) * scale - (0.5 if scale == 1.0 else 0.3))


def _random_pair(model: nn.Module, input_shape: Tuple[int, ...], seed: int, training: bool, hard: bool
                 ) -> Tuple[nn.Module, nn.Module, torch.Tensor]:
    """(sparse search, dense search, input) of ``model`` with random masks, in the given mode."""
    sparse, dense = search_pair(model, input_shape)
    _randomize(sparse, seed + 1)
    dense.load_state_dict(sparse.state_dict())
    dtype = next(model.parameters()).dtype
    x = torch.randn((3,) + tuple(input_shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    for search in (sparse, dense):
        search.train(training)
        set_softmax(search, hard, temperature=0.7)
    return sparse, dense, x


@SETTINGS
@given(spec=model_specs(), seed=st.integers(0, 2 ** 16), training=st.booleans(), hard=st.booleans())
def test_random_models_and_masks_sparse_equals_dense(monkeypatch, spec: rm.ModelSpec, seed: int,
                                                     training: bool, hard: bool) -> None:
    torch.manual_seed(seed)
    sparse, dense, x = _random_pair(rm.RandomNet(spec), spec.input_shape, seed, training, hard)
    with forced_sparse(monkeypatch):
        got = results(sparse, x, seed)
    assert_same(got, results(dense, x, seed))


@SETTINGS
@given(spec=model_specs(), seed=st.integers(0, 2 ** 16), training=st.booleans(), hard=st.booleans())
@example(spec=rm.ModelSpec(1, 2, 6, (rm.BlockSpec("supernet", 3, branches=("sep", "sep")),)),
         seed=0, training=False, hard=False)
def test_random_models_with_masks_flipping_between_steps(monkeypatch, spec: rm.ModelSpec, seed: int,
                                                         training: bool, hard: bool) -> None:
    """Three SGD steps on random models, a third of every PIT mask parameter flipped across
    the threshold between them: a flip changes the sets, the layouts and the paths the layers
    take (it found a 1-D output the supernet sum then added to in place, a view autograd
    refuses to modify)."""
    torch.manual_seed(seed)
    sparse, dense, x = _random_pair(rm.RandomNet(spec), spec.input_shape, seed, training, hard)
    with forced_sparse(monkeypatch):
        _steps_with_flips(sparse, dense, x, seed)


def _steps_with_flips(sparse: nn.Module, dense: nn.Module, x: torch.Tensor, seed: int) -> None:
    """Three SGD steps, sparse and dense the same each time, with a third of every PIT mask
    parameter flipped across the threshold between them (the supernets' α left as they are)."""
    optimizers = [torch.optim.SGD(search.parameters(), lr=1e-2) for search in (sparse, dense)]
    flips = torch.Generator().manual_seed(seed + 7)
    for step in range(3):
        assert_same(results(sparse, x, seed + step), results(dense, x, seed + step))
        for optimizer in optimizers:
            optimizer.step()
        with torch.no_grad():
            for name, param in sparse.named_nas_parameters():
                if not name.endswith("combiner.alpha"):
                    flip = torch.rand(param.shape, generator=flips) < 0.3
                    param[flip] = torch.where(param[flip] > 0.5, 0.2, 0.8)
        dense.load_state_dict(sparse.state_dict())


class _CausalTCN(nn.Module):
    """Dilated Conv1d layers, each after a causal ``ConstantPad1d`` (absorbed into the layer
    by the fast path's padding pass) or with symmetric padding, then BatchNorm or not and a
    ReLU, a LeakyReLU or nothing."""

    def __init__(self, in_channels: int, layers: Tuple[Tuple[int, int, int, bool, str, bool], ...]) -> None:
        super().__init__()
        modules, channels = [], in_channels
        for out, kernel, dilation, causal, act, bn in layers:
            reach = (kernel - 1) * dilation
            if causal:
                modules.append(nn.ConstantPad1d((reach, 0), 0.0))
            modules.append(nn.Conv1d(channels, out, kernel, dilation=dilation, padding=0 if causal else reach // 2))
            if bn:
                modules.append(nn.BatchNorm1d(out))
            modules.append({"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.1), "none": nn.Identity()}[act])
            channels = out
        self.features = nn.Sequential(*modules)
        self.head = nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(2))


@st.composite
def causal_tcn_layers(draw: st.DrawFn) -> Tuple[Tuple[int, int, int, bool, str, bool], ...]:
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        kernel, dilation, causal = draw(st.sampled_from([3, 5, 8])), draw(st.sampled_from([1, 2])), draw(st.booleans())
        causal = causal or (kernel - 1) * dilation % 2 == 1  # symmetric padding needs an even reach
        layers.append((draw(st.sampled_from([4, 6, 8])), kernel, dilation, causal,
                       draw(st.sampled_from(["relu", "leaky", "none"])), draw(st.booleans())))
    return tuple(layers)


@SETTINGS
@given(layers=causal_tcn_layers(), length=st.sampled_from([16, 33]), seed=st.integers(0, 2 ** 16))
def test_random_causal_tcns_with_masks_flipping_between_steps(monkeypatch, layers, length: int, seed: int) -> None:
    """Random TCNs (causal padding absorbed into the layers, receptive-field and dilation masks
    searched): sparse equals dense over three SGD steps with masks flipping between them, and
    the export of either equals its search in eval mode."""
    torch.manual_seed(seed)
    sparse, dense, x = _random_pair(_CausalTCN(2, layers), (2, length), seed, training=True, hard=False)
    with forced_sparse(monkeypatch):
        _steps_with_flips(sparse, dense, x, seed)
        for search in (sparse, dense):
            search.eval()
            with torch.no_grad():
                torch.testing.assert_close(search.arch_export(add_bn=False).eval()(x), search(x),
                                           rtol=1e-4, atol=1e-5)


class _InPlaceAfterLayers(nn.Module):
    """In-place ops on the outputs of PIT layers: ReLU(inplace=True), ``Tensor.add_``."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.a = conv(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.b = conv(8, 8, 3, padding=1)
        self.c = conv(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.a(x))
        z = self.b(y).add_(self.c(y))
        return self.head(torch.relu_(z).flatten(2).mean(-1))


@pytest.mark.parametrize("dims", [1, 2])
def test_in_place_ops_on_the_outputs_of_sparse_layers(monkeypatch, dims: int) -> None:
    shape = (3, 16) if dims == 1 else (3, 8, 8)
    torch.manual_seed(0)
    sparse, dense = search_pair(_InPlaceAfterLayers(dims), shape)
    prune_randomly((sparse, dense), 0.5, seed=1)
    x = torch.randn((4,) + shape, generator=torch.Generator().manual_seed(2))
    with forced_sparse(monkeypatch) as calls:
        got = results(sparse, x, 0)
    assert calls.count > 0
    assert_same(got, results(dense, x, 0))


class _LayersReadingAndWritingOneGroup(nn.Module):
    """A residual whose mask the supernet (an Identity branch) and the convolution after it
    share: both read and write one channel group, and neither has a ReLU before the add, so
    the pruned rows and the dead inputs of that group need their gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 4, 3, padding=1)
        self.sn = PITSuperNetModule([nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)), nn.Identity()])
        self.after = nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.after(self.sn(x)))
        return self.head(x.mean(dim=2))


@pytest.mark.parametrize("hard", [False, True])
def test_a_group_read_and_written_by_layers_needing_its_gradients_stays_full_width(hard: bool) -> None:
    """The group of a layer's input and output is compact only if both sides allow it (it
    used to be made compact by the side that allowed it: the step then refused to run)."""
    torch.manual_seed(0)
    sparse, dense = search_pair(_LayersReadingAndWritingOneGroup(), (2, 12))
    prune_randomly((sparse, dense), 0.5, seed=0)
    assert sparse._sparse_runner[0].compact_groups == ()
    x = torch.randn(3, 2, 12, generator=torch.Generator().manual_seed(1))
    for search in (sparse, dense):
        set_softmax(search, hard)
    assert_same(results(sparse, x, 0), results(dense, x, 0))


class _DropoutAfterAnUnprunedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(4, 4, 1)
        self.b = nn.Conv1d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.b(torch.relu(self.a(x))))).mean(-1))


def test_dropout_draws_the_dense_noise_on_a_compact_group_that_keeps_every_channel() -> None:
    """In a step with compact work, the tensors of a compact group are in the compact layout
    even when its mask keeps every channel: the dropout on them must still draw the noise of
    the dense path's contiguous tensor (dropout draws in memory order)."""
    torch.manual_seed(0)
    sparse, dense = search_pair(_DropoutAfterAnUnprunedLayer(), (4, 8))
    with torch.no_grad():
        sparse.seed.a.out_features_masker.alpha.copy_(torch.tensor([0.1, 0.1, 0.1, 0.9]))
    dense.load_state_dict(sparse.state_dict())
    execution = sparse._sparse_runner[0]
    assert len(execution.compact_groups) == 2 and execution.runner is not None
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(1))
    assert_same(results(sparse, x, 0), results(dense, x, 0))


@SETTINGS
@given(spec=op_zoo.zoo_specs(), seed=st.integers(0, 2 ** 16), training=st.booleans(), hard=st.booleans())
@example(spec=(1, 4, (("supernet", 4, ("relu",), 1), ("supernet", 4, ("relu", "dropout"), 3))),
         seed=2, training=True, hard=False)
def test_random_models_with_every_kind_of_activation_sparse_equals_dense(monkeypatch, spec, seed: int,
                                                                        training: bool, hard: bool) -> None:
    """float64, tight: a channel skipped where PyTorch's backward is not exactly zero would
    show (the explicit example: dropout on a compact group that keeps every channel)."""
    dims, in_channels, layers = spec
    shape = (in_channels, 8) if dims == 1 else (in_channels, 5, 5)
    torch.manual_seed(seed)
    sparse, dense, x = _random_pair(op_zoo.ZooNet(dims, in_channels, layers).double(), shape, seed, training, hard)
    with forced_sparse(monkeypatch):
        got = results(sparse, x, seed)
    assert_same(got, results(dense, x, seed), rtol=1e-9, atol=1e-10)


@pytest.fixture(scope="module")
def workload_pairs():
    """Sparse and dense searches of small-input benchmark workloads (built once), 50 % of
    every channel mask pruned."""
    pairs = {}
    for name in ("seed", "linear_supernet", "resnet8", "dscnn", "tcn"):
        workload = workloads()[name]
        torch.manual_seed(0)
        pair = search_pair(workload.factory(), workload.input_shape)
        prune_randomly(pair, 0.5, seed=1)
        pairs[name] = pair
    return pairs


@pytest.mark.parametrize("name", ["seed", "linear_supernet", "resnet8", "dscnn", "tcn"])
@pytest.mark.parametrize("mode", ["soft", "hard", "gumbel_hard"])
def test_workloads_sparse_equals_dense(monkeypatch, workload_pairs, name: str, mode: str) -> None:
    sparse, dense = workload_pairs[name]
    if mode != "soft" and not hasattr(sparse, "update_softmax_options"):
        pytest.skip("no supernet: soft mode only")
    shape = RUNTIME_INPUT.get(name, workloads()[name].input_shape)
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(3))
    for search in (sparse, dense):
        search.train()
        set_softmax(search, mode != "soft")
        for module in search.modules():  # Gumbel sampling of a supernet built without it
            if hasattr(module, "gumbel_softmax"):
                module.gumbel_softmax = mode == "gumbel_hard"
    with forced_sparse(monkeypatch) as calls:
        got = results(sparse, x, seed=5)
    assert calls.count > 0 or mode != "soft"  # hard: the selected branch may have no pruned mask
    assert_same(got, results(dense, x, seed=5))
    for search in (sparse, dense):
        set_softmax(search, False)
        for module in search.modules():
            if hasattr(module, "gumbel_softmax"):
                module.gumbel_softmax = False


@pytest.mark.parametrize("name", ["seed", "linear_supernet", "resnet8", "dscnn", "tcn"])
@pytest.mark.parametrize("hard", [False, True])
def test_workloads_under_inference_mode(monkeypatch, workload_pairs, name: str, hard: bool) -> None:
    """Evaluation under ``torch.inference_mode()`` (its tensors have no version counter, which
    the shared input gathers of a step key on): the dense path's outputs."""
    sparse, dense = workload_pairs[name]
    shape = RUNTIME_INPUT.get(name, workloads()[name].input_shape)
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(3))
    for search in (sparse, dense):
        search.eval()
        set_softmax(search, hard)
    try:
        with forced_sparse(monkeypatch), torch.inference_mode():
            got = sparse(x)
        with torch.no_grad():
            want = dense(x)
    finally:
        for search in (sparse, dense):
            search.train()
            set_softmax(search, False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("native", [True, False])
def test_strided_pointwise_layers_on_an_odd_batch_with_two_threads(monkeypatch, workload_pairs, native: bool) -> None:
    """ResNet-8's strided 1×1 convolutions (shortcuts, a branch) run compact in channels_last;
    oneDNN's weight gradient of such a convolution writes out of bounds on an odd batch with
    2 threads (the process then crashed): the compact layers read the strided samples with
    stride 1 instead. Native op and Python path, against the dense path."""
    from plinio.fast import sparse_conv

    sparse, dense = workload_pairs["resnet8"]
    x = torch.randn((3,) + tuple(RUNTIME_INPUT["resnet8"]), generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if not native:
            monkeypatch.setattr(sparse_conv, "native_compact_conv", lambda: False)
        for step in range(3):
            with forced_sparse(monkeypatch):
                got = results(sparse, x, step)
            assert_same(got, results(dense, x, step))
    finally:
        torch.set_num_threads(threads)


def test_depthwise_and_pointwise_layers_and_merged_convs_run_sparse(workload_pairs) -> None:
    """The sites of the workloads: depthwise convs, 1×1 convs, Linear, merged supernet convs."""
    names = {}
    for name in ("dscnn", "resnet8"):
        sparse, _ = workload_pairs[name]
        modules = {id(m): n for n, m in sparse.seed.named_modules()}
        names[name] = {modules[id(key)] for key in sparse._sparse_runner[0].sites}
    assert "classifier" in names["dscnn"]
    assert any(n.endswith("sn_input_layers.2.0.0") for n in names["dscnn"])  # depthwise
    assert any(n.endswith("sn_input_layers.2.1.0") for n in names["dscnn"])  # pointwise
    assert {"stack1.conv2.sn_combiner", "stack2.conv2.sn_combiner"} <= names["resnet8"]  # merged


def test_compact_layers_convolve_their_unmasked_weight_and_build_no_masked_weight(monkeypatch, workload_pairs) -> None:
    """In a sparse step a compact layer whose only mask is its channel mask gives
    plinio::compact_conv its unmasked weight and α (the op gives α its gradient) instead of
    building a masked weight; the TCN's layers, with receptive-field and dilation masks too,
    build theirs. Values and gradients: test_workloads_sparse_equals_dense."""
    from plinio.fast.sparse_conv import native_compact_conv

    if not native_compact_conv():
        pytest.skip("plinio::compact_conv is not available (extension not built)")
    built = []
    masked_weight = ops.pit_masked_weight

    def counting(weight, *args, **kwargs):
        built.append(weight)
        return masked_weight(weight, *args, **kwargs)

    monkeypatch.setattr(ops, "pit_masked_weight", counting)
    for name in ("resnet8", "dscnn", "tcn"):
        x = torch.randn((4,) + tuple(RUNTIME_INPUT.get(name, workloads()[name].input_shape)),
                        generator=torch.Generator().manual_seed(3))
        counts = {}
        for label, search in zip(("sparse", "dense"), workload_pairs[name]):
            search.train()
            built.clear()
            results(search, x, seed=5)
            counts[label] = len(built)
        if name == "tcn":
            assert counts["sparse"] == counts["dense"] > 0, counts
        else:
            assert counts["sparse"] < counts["dense"], (name, counts)


def test_has_time_masks_says_whether_a_layer_builds_tap_masks() -> None:
    """The masks shortcut reads ``has_time_masks`` instead of building the tap-mask arguments:
    it must agree with them (Conv1d of 1 and 3 taps, receptive field trained or not)."""
    from plinio.methods import PIT

    model = nn.Sequential(nn.Conv1d(4, 8, 1), nn.ReLU(), nn.Conv1d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16, 3))
    search = PIT(model, input_shape=(4, 16))
    for train_rf in (True, False):
        search.train_rf = search.train_dilation = train_rf
        layers = [m for m in search.modules() if hasattr(m, "fused_time_params")]
        assert [m.has_time_masks for m in layers] == [False, True, False]
        assert all(m.has_time_masks == (m.fused_time_params() != (None, None)) for m in layers)


@pytest.mark.parametrize("name", ["resnet8", "linear_supernet"])
def test_merged_convs_build_only_the_kept_block_of_their_kernel(monkeypatch, workload_pairs, name: str) -> None:
    """A pruned merged convolution (ResNet-8's conv2 supernets, with an Identity member in
    stack1) builds its kernel for the kept rows and live columns only, with the dense values
    and gradients."""
    sparse, dense = workload_pairs[name]
    shape = RUNTIME_INPUT.get(name, workloads()[name].input_shape)
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(3))
    blocks = []
    original = MergedConv.kernel_and_bias

    def recorded(self, theta, like, identity_rows=None, block=None):
        kernel, bias = original(self, theta, like, identity_rows, block)
        if block is not None:
            blocks.append((self.geometry, block, tuple(kernel.shape)))
        return kernel, bias

    monkeypatch.setattr(MergedConv, "kernel_and_bias", recorded)
    for search in (sparse, dense):
        search.train()
        set_softmax(search, False)
    with forced_sparse(monkeypatch):
        got = results(sparse, x, seed=5)
    assert_same(got, results(dense, x, seed=5))
    assert blocks, "no merged convolution built a compact block"
    for geometry, (rows, cols), kernel_shape in blocks:
        expected = (geometry.out_channels if rows is None else rows.numel(),
                    geometry.in_channels if cols is None else cols.numel())
        assert kernel_shape[:2] == expected and expected != (geometry.out_channels, geometry.in_channels)


def test_masks_flipping_between_steps(monkeypatch) -> None:
    """Three Adam steps with channels flipped in and out between them: the same trajectory."""
    workload = workloads()["resnet8"]
    torch.manual_seed(0)
    sparse, dense = search_pair(workload.factory(), workload.input_shape)
    prune_randomly((sparse, dense), 0.5, seed=2)
    optimizers = [torch.optim.Adam(s.parameters(), lr=1e-3) for s in (sparse, dense)]
    x = torch.randn((4, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    flips = torch.Generator().manual_seed(4)
    with forced_sparse(monkeypatch) as calls:
        for step in range(3):
            got, want = results(sparse, x, step), results(dense, x, step)
            assert_same(got, want)
            for opt in optimizers:
                opt.step()
            with torch.no_grad():  # flip a few channels of every mask, the same in both
                for (name, a), (_, b) in zip(sparse.named_nas_parameters(), dense.named_nas_parameters()):
                    if name.endswith("out_features_masker.alpha"):
                        flip = torch.rand(a.shape, generator=flips) < 0.3
                        for p in (a, b):
                            p[flip] = torch.where(p[flip].abs() > 0.5, 0.2, 0.8)
            for key, value in dense.state_dict().items():
                torch.testing.assert_close(sparse.state_dict()[key], value, rtol=1e-4, atol=1e-5,
                                           msg=lambda m, key=key: f"{key} after step {step}: {m}")
    assert calls.count > 0


def test_one_host_transfer_per_step_and_sets_reused_until_a_mask_changes(monkeypatch) -> None:
    sparse, _, input_shape = tcn_pair(prune=0.5)
    execution = sparse._sparse_runner[0]
    transfers = []
    original = execution._bits
    monkeypatch.setattr(execution, "_bits", lambda: transfers.append(1) or original())
    x = torch.randn(2, *input_shape)
    sparse(x)
    first = execution._last[2]
    sparse(x)
    assert len(transfers) == 2 and execution._last[2] is first  # same masks: same index sets
    with torch.no_grad():
        alpha = sparse.seed.get_submodule("features.1").out_features_masker.alpha
        alpha[0] = 0.1 if alpha[0].abs() > 0.5 else 0.9
    sparse(x)
    assert len(transfers) == 3 and execution._last[2] is not first


def test_the_switch(monkeypatch) -> None:
    sparse, dense, input_shape = tcn_pair()
    assert sparse.sparse and not dense.sparse
    assert sparse.fast_plan["sparse"]["sites"] == 5 and sparse.fast_plan["sparse"]["reason"] == ""
    assert dense.fast_plan["sparse"] == {"sites": 0, "reason": "switched off (sparse=False)"}
    assert list(sparse.state_dict()) == list(dense.state_dict())
    sparse.fast = False
    assert not sparse.sparse and sparse.fast_plan["sparse"]["reason"] == "the fast path is off"
    sparse.fast = True
    assert sparse.sparse
    with pytest.raises(TypeError, match="sparse"):
        sparse.sparse = "yes"
    assert sparse.sparse
    prune_randomly((sparse, dense), 0.5, seed=0)
    x = torch.randn(2, *input_shape)
    with forced_sparse(monkeypatch) as calls:
        sparse.sparse = False
        off = results(sparse, x, 0)
        assert calls.count == 0
        sparse.sparse = True
        on = results(sparse, x, 0)
        assert calls.count > 0
    assert_same(on, off)


def test_dense_under_torch_compile_and_autocast(monkeypatch) -> None:
    sparse, dense, input_shape = tcn_pair(prune=0.5)
    x = torch.randn(2, *input_shape)
    with forced_sparse(monkeypatch) as calls:
        compiled = torch.compile(sparse, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), dense(x), rtol=1e-5, atol=1e-6)
        assert calls.count == 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = sparse(x), dense(x)
        assert calls.count == 0 and torch.equal(got, want)
        sparse(x)
        assert calls.count > 0


def test_double_backward_is_refused_with_the_switch_named(monkeypatch) -> None:
    sparse, dense, input_shape = tcn_pair(prune=0.5)
    x = torch.randn(2, *input_shape)
    with forced_sparse(monkeypatch):
        loss = sparse(x).square().sum()
        with pytest.raises(RuntimeError, match=r"double backward.*sparse=False"):
            torch.autograd.grad(loss, list(sparse.net_parameters()), create_graph=True)
    grads = torch.autograd.grad(dense(x).square().sum(), list(dense.net_parameters()), create_graph=True)
    assert any(g.requires_grad for g in grads)  # the dense fast path supports it


@pytest.mark.parametrize("name", ["tcn", "dscnn"])
def test_saved_for_backward_bytes_shrink_with_the_pruning(monkeypatch, name: str) -> None:
    saved = {}
    for fraction in (0.0, 0.75):
        setups = build_setups(name, 8, "cpu", prune_fraction=fraction, variants=("fast",))
        search = setups["fast"]
        with forced_sparse(monkeypatch):
            saved[(fraction, True)] = saved_activation_bytes(search)
        search.wrapper.sparse = False
        saved[(fraction, False)] = saved_activation_bytes(search)
    assert saved[(0.75, True)] < 0.9 * saved[(0.75, False)]
    assert saved[(0.0, True)] == saved[(0.0, False)]


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """CUDA convolutions and matrix products in full float32 (TF32, cuDNN's default, rounds
    convolutions of different shapes differently)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tcn", "resnet8"])
def test_cuda_sparse_equals_dense(monkeypatch, no_tf32, name: str) -> None:
    """On a CUDA device: the same values and gradients, the index sets on the device (full
    float32 convolutions: with TF32 the sparse and dense convolutions round differently)."""
    workload = workloads()[name]
    torch.manual_seed(0)
    sparse, dense = (s.cuda() for s in search_pair(workload.factory(), workload.input_shape))
    prune_randomly((sparse, dense), 0.5, seed=0)
    shape = RUNTIME_INPUT.get(name, workload.input_shape)
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(0)).cuda()
    with forced_sparse(monkeypatch) as calls:
        got = results(sparse, x, 0)
    assert calls.count > 0
    assert all(sets.kept is None or sets.kept.is_cuda for sets in sparse._sparse_runner[0]._last[2].sites.values())
    assert_same(got, results(dense, x, 0))


def test_steps_on_a_device_type_not_listed_run_dense(monkeypatch) -> None:
    """A model on a device type missing from SPARSE_DEVICE_TYPES (CUDA by default) runs its
    pruned steps dense: no sparse call, no index sets built, the dense values."""
    workload = workloads()["resnet8"]
    torch.manual_seed(0)
    sparse, dense = search_pair(workload.factory(), workload.input_shape)
    prune_randomly((sparse, dense), 0.5, seed=0)
    x = torch.randn((2,) + tuple(workload.input_shape), generator=torch.Generator().manual_seed(0))
    with forced_sparse(monkeypatch, devices=frozenset()) as calls:
        got = results(sparse, x, 0)
        assert not sparse.sparse and sparse.fast_plan["sparse"]["sites"] == 0
        assert "the model is on cpu, where steps run dense" in sparse.fast_plan["sparse"]["reason"]
    assert calls.count == 0 and sparse._sparse_runner[0]._last is None
    assert_same(got, results(dense, x, 0))
    with forced_sparse(monkeypatch, devices=frozenset({"cpu"})) as calls:
        results(sparse, x, 0)
        assert sparse.sparse and sparse.fast_plan["sparse"]["sites"] > 0
    assert calls.count > 0


@pytest.mark.gpu
def test_cuda_steps_run_dense_by_default(monkeypatch, no_tf32) -> None:
    """sparse=True on a CUDA model: its steps run the dense convolutions (no sparse call and
    no host synchronisation for the masks), and the wrapper says so."""
    workload = workloads()["resnet8"]
    torch.manual_seed(0)
    sparse, dense = (s.cuda() for s in search_pair(workload.factory(), workload.input_shape))
    prune_randomly((sparse, dense), 0.5, seed=0)
    x = torch.randn((4,) + tuple(workload.input_shape), generator=torch.Generator().manual_seed(0)).cuda()
    with forced_sparse(monkeypatch, devices=sparse_step.SPARSE_DEVICE_TYPES) as calls:
        got = results(sparse, x, 0)
    assert calls.count == 0 and sparse._sparse_runner[0]._last is None
    assert not sparse.sparse and "the model is on cuda" in sparse.fast_plan["sparse"]["reason"]
    assert_same(got, results(dense, x, 0))


class _ConcatAndReuse(nn.Module):
    """A layer reading a channel concatenation of two pruned layers (one through a GELU: no
    killer), and a layer called twice on inputs of the same group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.d = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), nn.functional.gelu(self.b(x))], dim=1)
        first = self.shared(torch.relu(self.c(y)))
        second = self.shared(torch.relu(self.d(x)))
        return self.head(torch.relu(first) + torch.relu(second))


def test_concatenated_inputs_and_a_layer_called_twice(monkeypatch) -> None:
    torch.manual_seed(0)
    sparse, dense = search_pair(_ConcatAndReuse(), (3, 8, 8))
    _randomize(sparse, 3)
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with forced_sparse(monkeypatch) as calls:
        got = results(sparse, x, 0)
    assert_same(got, results(dense, x, 0))
    sites = sparse._sparse_runner[0].sites
    c, shared, b = (sites[sparse.seed.get_submodule(n)] for n in ("c", "shared", "b"))
    assert type(c.live).__name__ == "Concat" and not shared.grad_pruned_rows and b.grad_pruned_rows
    assert calls.count >= 4


def test_a_threshold_changed_after_wrapping_makes_the_step_dense(monkeypatch) -> None:
    sparse, dense, input_shape = tcn_pair(prune=0.5)
    for search in (sparse, dense):
        search.seed.get_submodule("features.5").binarization_threshold = 0.3
    x = torch.randn(2, *input_shape)
    with forced_sparse(monkeypatch) as calls:
        got = results(sparse, x, 0)
    assert calls.count == 0
    assert_same(got, results(dense, x, 0))


def test_kept_sets_binarize_exactly_as_the_masked_weight_op() -> None:
    """α at and around the threshold (±0.5, one ulp either side, -0.0, the keep-alive
    channel below it): the step keeps exactly the rows pit_masked_weight keeps."""
    sparse, _, input_shape = tcn_pair()
    layer = sparse.seed.get_submodule("features.5")
    masker = layer.out_features_masker
    edge = torch.tensor([0.5, -0.5, 0.5 + 2 ** -24, 0.5 - 2 ** -25, -0.0, 0.0, 1.0, -0.7])
    with torch.no_grad():
        masker.alpha.copy_(edge.repeat(masker.alpha.numel() // edge.numel() + 1)[:masker.alpha.numel()])
        masker.alpha[-1] = 0.1  # keep-alive: kept whatever α
    sparse(torch.randn(2, *input_shape))
    step = sparse._sparse_runner[0]._last[2]
    _, _, channel, _ = ops.pit_masked_weight(layer.weight, layer.bias, masker.alpha, *layer.fused_time_params(),
                                             threshold=layer.binarization_threshold,
                                             keep_alive=masker.keep_alive_channels, return_masks=True)
    assert torch.equal(step.sites[layer].kept, torch.nonzero(channel > 0.5).flatten())
