"""Compact execution (README "Sparse execution"): which channel groups keep only their kept
channels between layers, that their tensors really are compact, that dropout draws the dense
path's random numbers, and that groups where dropping channels could change a gradient or a
random draw stay full width — with the values and gradients of the dense fast path. (The
random-model, workload, flip and DDP tests of test_sparse_search / test_sparse_ddp run the
compact groups of their models too.)"""
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plinio.fast.compact_dropout as compact_dropout
from bench.models import workloads
from plinio.fast.compact_dropout import CompactDropout
from plinio.fast.linear_ops import ConvGeometry
from plinio.fast import sparse_step
from plinio.fast.sparse_conv import sparse_plan
from plinio.graph.channels import desc_groups
from sparse_helpers import assert_same, forced_sparse, prune_randomly, results, search_pair


def _execution(search: nn.Module):
    return search._sparse_runner[0]


def _searched_groups(search: nn.Module):
    return sorted(g for g, m in _execution(search).masks.items() if m.param is not None)


@functools.lru_cache(maxsize=None)
def _compact_pair(name: str, fraction: float = 0.5):
    """Sparse and dense searches of a workload, ``fraction`` of every mask pruned (built once:
    the tests compute gradients, they change no parameter)."""
    workload = workloads()[name]
    torch.manual_seed(0)
    pair = search_pair(workload.factory(), workload.input_shape)
    prune_randomly(pair, fraction, seed=1)
    return pair, workload.input_shape


@pytest.mark.parametrize("name", ["dscnn", "resnet8", "tcn"])
def test_every_searched_group_of_the_workloads_runs_compact(monkeypatch, name: str) -> None:
    """The MLPerf-Tiny supernets and the TCN: every searched group compact; the tensor reaching
    the global pooling holds the kept channels of its group only; the step equals dense."""
    (sparse, dense), shape = _compact_pair(name)
    execution = _execution(sparse)
    assert execution.compact_groups == tuple(_searched_groups(sparse))
    seen = []
    hook = sparse.seed.get_submodule("pool").register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(3))
    sparse.train()
    dense.train()
    with forced_sparse(monkeypatch):
        got = results(sparse, x, seed=5)
    hook.remove()
    group = next(desc_groups(execution.sites[sparse.seed.get_submodule("classifier")].live))
    kept = execution._last[2].compact[group]
    assert kept is not None and seen == [kept.numel()] and kept.numel() < execution.masks[group].size
    assert_same(got, results(dense, x, seed=5))


def test_dscnn_dropouts_run_compact_in_training_mode_with_the_dense_draws(monkeypatch) -> None:
    """DS-CNN's two dropouts (p = 0.2, 0.4) sit between compact supernets: the step's output
    and gradients equal the dense path's with the same seed, and so does the generator state
    after the step."""
    (sparse, dense), shape = _compact_pair("dscnn")
    runner = _execution(sparse).runner
    assert sum(isinstance(m, CompactDropout) for m in runner.modules()) == 2
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(3))
    sparse.train()
    dense.train()
    with forced_sparse(monkeypatch):
        got = results(sparse, x, seed=7)
    state = torch.get_rng_state()
    assert_same(got, results(dense, x, seed=7))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("every_channel_kept", [False, True])
def test_compact_dropout_is_the_dense_dropout_on_the_kept_channels_bit_for_bit(
        monkeypatch, inplace: bool, channels_last: bool, every_channel_kept: bool) -> None:
    """The kept channels of a compact tensor, or (its mask keeping everything) the whole
    tensor in the compact layout: the dense path's noise on them, the same generator state."""
    kept = torch.arange(8) if every_channel_kept else torch.tensor([0, 3, 4, 6])
    full = torch.randn(5, 8, 6, 7)  # the dense path's tensor: contiguous
    if not every_channel_kept:
        full[:, [1, 2, 5, 7]] = 0.0
    dropout = nn.Dropout(0.3, inplace=inplace)
    torch.manual_seed(0)
    want = dropout(full.clone())
    want_state = torch.get_rng_state()
    compact = full.index_select(1, kept)
    if channels_last:
        compact = compact.contiguous(memory_format=torch.channels_last)
    held = None if every_channel_kept else kept
    monkeypatch.setattr(compact_dropout, "compact_channels", lambda gid: held if gid == 9 else None)
    monkeypatch.setattr(compact_dropout, "in_sparse_step", lambda: True)
    torch.manual_seed(0)
    got = CompactDropout(dropout, 9, 8)(compact)
    assert torch.equal(got, want.index_select(1, kept))
    assert torch.equal(torch.get_rng_state(), want_state)
    dropout.eval()
    assert torch.equal(CompactDropout(dropout, 9, 8)(compact), compact)
    with pytest.raises(TypeError, match="nn.Dropout"):
        CompactDropout(nn.Dropout2d(0.3), 9, 8)


class _MixedGroups(nn.Module):
    """Groups that must stay full width next to compact ones: a LeakyReLU (no zero gradient on
    pruned channels), a functional dropout (random draws), a concatenation with the LeakyReLU
    group, and a plain conv path that stays compact."""

    def __init__(self) -> None:
        super().__init__()
        self.leaky = nn.Conv2d(3, 6, 3, padding=1)
        self.dropped = nn.Conv2d(3, 5, 3, padding=1)
        self.concat_partner = nn.Conv2d(3, 4, 3, padding=1)
        self.plain = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(10, 8, 3, padding=1)
        self.after_dropout = nn.Conv2d(5, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.leaky_relu(self.leaky(x), 0.1), torch.relu(self.concat_partner(x))], dim=1)
        z = F.dropout(torch.relu(self.dropped(x)), 0.5, self.training)
        s = torch.relu(self.plain(x))
        total = torch.relu(self.mix(y)) + torch.relu(self.after_dropout(z)) + s
        return self.head(torch.flatten(F.adaptive_avg_pool2d(total, 1), 1))


def test_groups_that_stay_full_width(monkeypatch) -> None:
    torch.manual_seed(0)
    sparse, dense = search_pair(_MixedGroups(), (3, 8, 8))
    prune_randomly((sparse, dense), 0.5, seed=2)
    execution = _execution(sparse)
    sites = {name: execution.sites[sparse.seed.get_submodule(name)]
             for name in ("leaky", "dropped", "concat_partner", "plain", "mix", "after_dropout")}
    compact = set(execution.compact_groups)
    assert sites["plain"].kept in compact and sites["plain"].compact_out  # the residual sum: one group
    for name in ("leaky", "concat_partner", "dropped"):
        assert sites[name].kept not in compact and not sites[name].compact_out, name
    assert not sites["mix"].compact_in and sites["mix"].compact_out
    x = torch.randn(4, 3, 8, 8)
    for training in (False, True):
        sparse.train(training)
        dense.train(training)
        with forced_sparse(monkeypatch):
            got = results(sparse, x, seed=3)
        assert_same(got, results(dense, x, seed=3))


class _UnfoldedBatchNorm(nn.Module):
    """A BatchNorm after the ReLU cannot be folded: a PITBatchNorm follows the conv's mask,
    and its running statistics of pruned channels update in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.out = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.bn(torch.relu(self.conv(x)))))


def test_a_group_with_an_unfolded_batchnorm_stays_full_width_and_its_running_stats_match(monkeypatch) -> None:
    torch.manual_seed(0)
    sparse, dense = search_pair(_UnfoldedBatchNorm(), (3, 8, 8))
    prune_randomly((sparse, dense), 0.5, seed=2)
    assert _execution(sparse).compact_groups == ()
    x = torch.randn(4, 3, 8, 8)
    sparse.train()
    dense.train()
    with forced_sparse(monkeypatch):
        got = results(sparse, x, seed=3)
    assert_same(got, results(dense, x, seed=3))
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(sparse.seed.get_submodule("bn").get_buffer(name),
                                   dense.seed.get_submodule("bn").get_buffer(name))


def test_a_compact_plan_refuses_to_drop_gradients_it_needs() -> None:
    geometry = ConvGeometry(ndim=2, in_channels=4, out_channels=6, groups=1, kernel=(3, 3), stride=(1, 1),
                            dilation=(1, 1), pad_left=(1, 1), pad_right=(1, 1), has_bias=True)
    kept, live = torch.tensor([0, 2]), torch.tensor([1, 3])
    with pytest.raises(ValueError, match="grad_pruned_rows=False"):
        sparse_plan(geometry, 6, 4, kept, live, grad_pruned_rows=True, grad_dead_inputs=False,
                    device=torch.device("cpu"), compact_out=True)
    with pytest.raises(ValueError, match="grad_dead_inputs=False"):
        sparse_plan(geometry, 6, 4, kept, live, grad_pruned_rows=False, grad_dead_inputs=True,
                    device=torch.device("cpu"), compact_in=True)
    plan = sparse_plan(geometry, 6, 4, kept, live, grad_pruned_rows=False, grad_dead_inputs=False,
                       device=torch.device("cpu"), compact_in=True, compact_out=True)
    assert plan.input_channels() == 2


def test_a_compact_layer_given_a_full_width_input_says_what_to_do(monkeypatch) -> None:
    (sparse, _), shape = _compact_pair("tcn")
    layer = sparse.seed.get_submodule("features.5")
    with forced_sparse(monkeypatch), _execution(sparse).step():
        with pytest.raises(RuntimeError, match="sparse=False"):
            layer(torch.randn(2, layer.in_channels, 16))


def test_a_channels_last_network_input_runs_the_step_dense(monkeypatch) -> None:
    """Compact dropout draws the noise of the contiguous tensors a contiguous input gives;
    with a channels_last input the step runs dense (the same values and draws)."""
    torch.manual_seed(0)
    sparse, dense = search_pair(_MixedGroups(), (3, 8, 8))
    prune_randomly((sparse, dense), 0.5, seed=2)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with forced_sparse(monkeypatch) as calls:
        got = results(sparse, x, seed=3)
    assert calls.count == 0
    assert_same(got, results(dense, x, seed=3))


class _ConvHead(nn.Module):
    """Compact groups ending in a convolution whose output is the network output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def test_full_width_tensors_keep_the_dense_layout(monkeypatch) -> None:
    """Compact tensors run in channels_last; what leaves them (the network output, the input
    gradient) has the dense path's contiguous layout, so a view of it works as it does dense."""
    torch.manual_seed(0)
    sparse, dense = search_pair(_ConvHead(), (3, 8, 8))
    prune_randomly((sparse, dense), 0.5, seed=2)
    assert len(_execution(sparse).compact_groups) == 2
    x = torch.randn(4, 3, 8, 8)
    with forced_sparse(monkeypatch) as calls:
        got = results(sparse, x, seed=3)
    assert calls.count >= 3
    assert got[0].is_contiguous() and got[2].is_contiguous()
    assert got[0].view(4, -1).shape == (4, 4 * 8 * 8)
    assert_same(got, results(dense, x, seed=3))


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and t.shape[1] > 1 \
        and not t.is_contiguous()


def test_compact_tensors_and_their_gradients_stay_channels_last(monkeypatch) -> None:
    """DS-CNN: a 1-channel network input (contiguous and channels_last at once), Identity
    branches and an average-pooled head (whose backward gives contiguous gradients). Every
    compact 2-D convolution's output and incoming gradient is channels_last, the layout it runs
    in, so none is copied to another layout per layer; the step equals dense."""
    (sparse, dense), shape = _compact_pair("dscnn")
    seen = []
    run_plan = sparse_step.run_sparse_plan

    def spied_run(plan, x, *args, **kwargs):
        y = run_plan(plan, x, *args, **kwargs)
        if y.dim() == 4 and plan.compact_out and y.shape[1] > 1:
            seen.append(("output", _channels_last(y)))
            y.register_hook(lambda grad: seen.append(("gradient", _channels_last(grad))))
        return y

    monkeypatch.setattr(sparse_step, "run_sparse_plan", spied_run)
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(3))
    sparse.train()
    dense.train()
    with forced_sparse(monkeypatch):
        got = results(sparse, x, seed=5)
    assert len(seen) > 20 and ("gradient", True) in seen
    assert all(channels_last for _, channels_last in seen), [kind for kind, ok in seen if not ok]
    assert_same(got, results(dense, x, seed=5))


def test_keep_gradient_layout_changes_the_layout_of_the_gradient_only() -> None:
    from plinio.fast.supernet_forward import keep_gradient_layout

    base = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    weights = torch.randn(2, 3)
    arrived = []
    out = keep_gradient_layout(base * 2)
    out.register_hook(lambda g: arrived.append(g))  # runs after the layout hook
    (out.mean((2, 3)) * weights).sum().backward()   # the mean's backward: a contiguous gradient
    assert _channels_last(arrived[0])
    torch.testing.assert_close(base.grad, (2 * weights / 20).view(2, 3, 1, 1).expand(2, 3, 4, 5))
    contiguous = torch.randn(2, 3, 4, 5, requires_grad=True) * 2
    assert keep_gradient_layout(contiguous) is contiguous and contiguous._backward_hooks is None


def test_branches_reading_one_input_share_its_channels_last_copy(monkeypatch) -> None:
    """ResNet-8's first supernet: every branch reads the (contiguous) network input; it is
    copied to channels_last once per forward, not once per branch convolution."""
    (sparse, dense), shape = _compact_pair("resnet8")
    x = torch.randn((4,) + tuple(shape), generator=torch.Generator().manual_seed(3))
    copies = {}
    gather = sparse_step._shared_gather

    def spied(t, index, kernels):
        out = gather(t, index, kernels)
        if t.is_leaf and t.shape == x.shape:  # the network input (results() passes a copy of x)
            copies.setdefault(id(out), out)
        return out

    monkeypatch.setattr(sparse_step, "_shared_gather", spied)
    with forced_sparse(monkeypatch) as calls:
        got = results(sparse, x, seed=5)
    assert calls.count > 3 and len(copies) == 1
    assert _channels_last(next(iter(copies.values())))
    assert_same(got, results(dense, x, seed=5))
