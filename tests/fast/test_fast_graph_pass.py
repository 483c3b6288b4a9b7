"""The graph pass: fast GraphModule == reference GraphModule (outputs and gradients of the
input, every weight and bias and α) on hand-written and random supernets, in soft, hard and
Gumbel modes; the original GraphModule and the state_dict are untouched."""
import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast_helpers import (OneSuperNet, assert_same, branch, branch_kinds, grads_of,
                          merge_plans, randomize, set_mode, traced_pair)
from plinio.fast import FAST_MODULE_NAME, FastSuperNet

MODES = [("soft", False, False), ("hard", True, False), ("gumbel_soft", False, True),
         ("gumbel_hard", True, True)]


def _compare(model, x, hard, seed=0, rtol=1e-9, atol=1e-9, train=True):
    model.train(train)
    set_mode(model, hard=hard, temperature=0.7)
    gm, fast = traced_pair(model)
    ref = grads_of(model, gm, x, seed)
    got = grads_of(model, fast, x, seed)
    assert_same(ref, got, rtol, atol)
    return gm, fast


def _seed_like(ndim=2, channels=6, gumbel=False):
    kinds = [("conv", 3), ("padded_chain", 3), ("conv", 5), ("identity", 1)]
    return OneSuperNet([branch(k, ndim, channels, k=ks) for k, ks in kinds], ndim, 3, channels,
                       gumbel=gumbel)


@pytest.mark.parametrize("name,hard,gumbel", MODES)
def test_seed_like_supernet_float64(name, hard, gumbel):
    model = _seed_like(gumbel=gumbel).double()
    randomize(model, 1)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    _, fast = _compare(model, x, hard)
    assert merge_plans(fast) == {"sn": ((0, 2, 3), (1,))}
    # the chain ends in a conv: θ scales that conv's weights instead of the branch output
    assert set(fast.sn.get_submodule(FAST_MODULE_NAME)._tails) == {1}


class _FunctionalRelu(nn.Module):
    """conv then ReLU written as a function call (``method``: as a tensor method)."""

    def __init__(self, channels: int, method: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.method = method

    def forward(self, x):
        y = self.conv(x)
        return y.relu() if self.method else torch.relu(y)


@pytest.mark.parametrize("name,hard,gumbel", MODES)
def test_branches_ending_in_relu_fuse_it_into_combine(name, hard, gumbel):
    c = 4
    branches = [branch("nonlinear", 2, c, k=3), branch("conv", 2, c, k=5),
                _FunctionalRelu(c, method=False), _FunctionalRelu(c, method=True),
                nn.Sequential(branch("conv", 2, c, k=3), nn.ReLU(inplace=True)),
                nn.ReLU(), branch("identity", 2, c)]
    model = OneSuperNet(branches, 2, 3, c, gumbel=gumbel).double()
    randomize(model, 3)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    _, fast = _compare(model, x, hard)
    module = fast.sn.get_submodule(FAST_MODULE_NAME)
    assert merge_plans(fast) == {"sn": ((1, 6), (0, 2, 3, 4, 5))}
    assert module.fused_relu_branches == (0, 2, 3, 4, 5)


def test_float32_allclose_and_eval_mode():
    model = _seed_like(ndim=1, channels=8)
    randomize(model, 2)
    x = torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(2))
    # float32 weight gradients sum ~10^3 products of magnitude ~10: 1e-4 absolute rounding
    _compare(model, x, hard=False, rtol=1e-4, atol=1e-4)
    _compare(model, x, hard=True, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.eval()
        gm, fast = traced_pair(model)
        torch.testing.assert_close(fast(x), gm(x), rtol=1e-4, atol=1e-5)


def test_original_graph_and_state_untouched():
    model = _seed_like()
    gm, fast = traced_pair(model)
    before = str(gm.graph)
    assert str(gm.graph) == before and FAST_MODULE_NAME not in before
    assert fast.sn.get_submodule(FAST_MODULE_NAME).__class__ is FastSuperNet
    assert sorted(fast.sn.get_submodule(FAST_MODULE_NAME).state_dict()) == []
    # the fast module shares the layers: one parameter set, no copies
    assert {id(p) for p in fast.parameters()} <= {id(p) for p in model.parameters()}
    copied = copy.deepcopy(fast)  # deep copies keep working (references follow the copy)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(copied(x), fast(x))


def test_hard_mode_keeps_batchnorm_statistics_of_skipped_branches():
    model = OneSuperNet([branch("conv_bn", 2, 4), branch("nonlinear", 2, 4, k=5),
                         branch("identity", 2, 4)], 2, 3, 4).double()
    randomize(model, 3)
    model.sn.sn_combiner.alpha.data = torch.tensor([0.0, 5.0, 0.0], dtype=torch.float64)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    ref_model = copy.deepcopy(model)
    set_mode(model, hard=True)
    set_mode(ref_model, hard=True)
    gm, _ = traced_pair(ref_model)
    _, fast = traced_pair(model)
    grads_of(ref_model, gm, x, 0)
    grads_of(model, fast, x, 0)
    bn_ref, bn_fast = ref_model.sn.sn_input_layers[0][1], model.sn.sn_input_layers[0][1]
    torch.testing.assert_close(bn_fast.running_mean, bn_ref.running_mean)
    assert int(bn_fast.num_batches_tracked) == 1


def test_hard_mode_gives_zero_not_missing_gradients():
    """Non-selected branches get zero gradients (as in the reference), so optimizers with
    momentum or weight decay behave identically."""
    model = _seed_like().double()
    randomize(model, 4)
    model.sn.sn_combiner.alpha.data = torch.tensor([0.0, 3.0, 0.0, 0.0], dtype=torch.float64)
    set_mode(model, hard=True)
    _, fast = traced_pair(model)
    _, grads, _ = grads_of(model, fast, torch.randn(1, 3, 5, 5, dtype=torch.float64), 0)
    for name in ("sn.sn_input_layers.0.weight", "sn.sn_input_layers.2.bias", "sn.sn_combiner.alpha"):
        assert grads[name] is not None and not grads[name].any(), name
    assert grads["sn.sn_input_layers.1.0.weight"].abs().sum() > 0


_KINDS = st.sampled_from(branch_kinds())


@st.composite
def _supernets(draw):
    ndim = draw(st.sampled_from([1, 2]))
    stride = draw(st.sampled_from([1, 1, 2]))
    channels = draw(st.sampled_from([2, 4]))
    n = draw(st.integers(1, 5))
    kinds = []
    for _ in range(n):
        kind = draw(_KINDS)
        if kind == "identity" and stride != 1:
            kind = "conv"
        kinds.append((kind, draw(st.sampled_from([1, 3, 5, 7])), draw(st.sampled_from([1, 2])),
                      draw(st.booleans())))
    mode = draw(st.sampled_from(MODES))
    return ndim, stride, channels, kinds, mode, draw(st.integers(0, 2 ** 16))


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(_supernets())
def test_random_supernets_match_reference(case):
    ndim, stride, channels, kinds, (_, hard, gumbel), seed = case
    branches = [branch(kind, ndim, channels, stride=stride, k=k, dilation=d, bias=bias)
                for kind, k, d, bias in kinds]
    model = OneSuperNet(branches, ndim, 2, channels, gumbel=gumbel).double()
    randomize(model, seed)
    shape = (2, 2, 11) if ndim == 1 else (2, 2, 7, 6)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    _, fast = _compare(model, x, hard, seed=seed)
    merged, _ = merge_plans(fast)["sn"]
    for i in merged:  # never merges a branch that is not provably one convolution
        assert kinds[i][0] not in ("padded_chain", "nonlinear", "conv_bn"), kinds


class _CustomConv(nn.Module):
    """A third-party layer exposing PIT's weight interface; ``shift`` makes its forward differ
    from what its hyper-parameters say (it must then not be merged)."""

    plinio_leaf = True  # an fx leaf, like plinio's own layers

    def __init__(self, channels: int, shift: float) -> None:
        super().__init__()
        base = nn.Conv2d(channels, channels, 3, padding=1)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "groups", "padding_mode"):
            setattr(self, attr, getattr(base, attr))
        self.weight, self.bias = base.weight, base.bias
        self.shift = shift

    def masked_weight_and_bias(self):
        return self.weight, self.bias

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight, self.bias, padding=1) + self.shift


@pytest.mark.parametrize("shift,merged", [(0.0, (0, 1)), (0.5, ())])
def test_unknown_layer_classes_are_checked_on_a_probe(shift, merged):
    model = OneSuperNet([_CustomConv(4, shift), branch("conv", 2, 4, k=5)], 2, 3, 4).double()
    randomize(model, 5)
    _, fast = _compare(model, torch.randn(2, 3, 6, 6, dtype=torch.float64), hard=False)
    plan = fast.plinio_merge_plans["sn"]
    assert plan.merged == merged
    if not merged:
        assert "not the plain convolution" in plan.reasons[0]
