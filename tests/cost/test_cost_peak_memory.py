"""Peak activation memory on hand-computed fixtures (a plain CNN, a residual block whose
shortcut stays alive across layers, a supernet weighted by θ, a TCN), its exactness for a
one-hot θ against the exported networks, fast == looped reference, finite-difference
gradients, and the errors."""
import pytest
import torch
import torch.nn as nn

from plinio.cost.peak_memory import Activation, ActivationSchedule, ChannelSum, PeakMemory, PeakMemoryCost, \
    schedule_from_graph
from tests.cost.cost_helpers import PlainCNN, TinySuperNet, TinyTCN, traced

F64 = torch.float64


def counts(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


def peak_and_grad(peak: PeakMemory, c: torch.Tensor, theta=None):
    value = peak(c, theta)
    return value.item(), torch.autograd.grad(value, c)[0].tolist()


def test_plain_cnn():
    gm = traced(PlainCNN(), (1, 6, 6))
    # n1: channels of conv1/relu/pool (36, 36, 9 elements each), n2: conv2 (9 each); flatten = 9·n2 features
    sched = schedule_from_graph(gm, {"conv1": 0, "relu": 0, "pool": 0, "conv2": 1, "flatten": ChannelSum(((1, 9.0),))},
                                n_counts=2)
    assert sched.steps == ("x", "conv1", "relu", "pool", "conv2", "flatten", "fc", "output")
    peak = PeakMemory(sched)
    # full width, in elements: x 36 | x+conv1 180 | conv1+relu 288 | relu+pool 180 | pool+conv2 108 |
    # conv2 72 (the flatten view is counted from the next step) | flatten+fc 77 | fc 5
    assert peak.step_bytes(counts(4, 8)).tolist() == [4 * e for e in (36, 180, 288, 180, 108, 72, 77, 5)]
    # n1 = 2.5, n2 = 6: the relu step holds 72·n1 = 180 elements -> 720 bytes, d/dn1 = 72·4
    assert peak_and_grad(peak, counts(2.5, 6)) == (720.0, [288.0, 0.0])
    # n1 = 0.8: the conv1 step wins (36 + 36·n1 = 64.8 elements)
    value, grad = peak_and_grad(peak, counts(0.8, 6))
    assert value == pytest.approx(259.2) and grad == pytest.approx([144.0, 0.0])
    assert peak.peak_step(counts(0.8, 6)) == "conv1"
    int8 = PeakMemoryCost(bytes_per_element=1).bind(gm)   # constant channels: the unsearched network
    assert int8(torch.zeros(0)).item() == 288.0
    with pytest.raises(ValueError, match=r"bytes_per_element must be a positive number"):
        PeakMemoryCost(bytes_per_element=0)


class ResidualBlock(nn.Module):
    """x (4×8) -> conv1 -> relu -> conv2 -> add(x, .) -> relu: x stays alive across the block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def test_residual_branch_alive_across_layers():
    gm = traced(ResidualBlock(), (4, 8))
    sched = schedule_from_graph(gm, {"conv1": 0, "relu": 0}, n_counts=1)
    peak = PeakMemory(sched)
    assert sched.steps == ("x", "conv1", "relu", "conv2", "add", "relu_1", "output")
    # elements (8 per channel, n = conv1/relu channels): x 32 | x+conv1 32+8n | x+conv1+relu 32+16n |
    # x+relu+conv2 64+8n | x+conv2+add 96 | add+relu_1 64 | relu_1 32
    n = 5.0
    expected = [32, 32 + 8 * n, 32 + 16 * n, 64 + 8 * n, 96, 64, 32]
    assert peak.step_bytes(counts(n)).tolist() == [4 * e for e in expected]
    assert peak_and_grad(peak, counts(5)) == (448.0, [64.0])   # relu step: the shortcut x is still live
    assert peak_and_grad(peak, counts(3)) == (384.0, [0.0])    # the add step


def test_hand_built_schedule_equals_the_traced_one():
    gm = traced(ResidualBlock(), (4, 8))
    traced_sched = schedule_from_graph(gm, {"conv1": 0, "relu": 0}, n_counts=1)
    names = ("x", "conv1", "relu", "conv2", "add", "relu_1", "output")
    masked, fixed = ChannelSum(((0, 1.0),)), ChannelSum(const=4)
    acts = (Activation("x", fixed, 8, 0, (1, 4)), Activation("conv1", masked, 8, 1, (2,)),
            Activation("relu", masked, 8, 2, (3,)), Activation("conv2", fixed, 8, 3, (4,)),
            Activation("add", fixed, 8, 4, (5,)), Activation("relu_1", fixed, 8, 5, (6,)))
    hand = ActivationSchedule(steps=names, step_branches=((),) * 7, activations=acts, n_counts=1)
    assert hand == traced_sched


def test_supernet_branches_weighted_by_theta():
    sched = schedule_from_graph(traced(TinySuperNet(), (2, 4, 4)))
    assert sched.n_choices == (3,)
    assert sched.step_branches == ((), (), ((0, 0),), ((0, 1),), ((0, 1),), ((0, 2),), (), ())
    peak = PeakMemory(sched)
    theta = torch.tensor([0.2, 0.5, 0.3], dtype=F64, requires_grad=True)
    # channels × 16 elements × 4 bytes = 64 bytes per channel:
    # x 2 | x+stem 6 | stem + θ0·4 | stem + θ1·8 (b0 not counted: another branch) | θ1·(8+4) (stem's
    # last reader in branch 1 was b1.0) | stem (the Identity output is counted from the next step) |
    # Σθ_i·4 (the mix writes in place) | 4
    expected = [2, 6, 4 + 0.8, 4 + 4.0, 6.0, 4, 4.0, 4]
    assert peak.step_bytes(torch.zeros(0, dtype=F64), theta).tolist() == pytest.approx([64 * e for e in expected])
    value = peak(torch.zeros(0, dtype=F64), theta)
    assert value.item() == pytest.approx(512.0)
    assert torch.autograd.grad(value, theta)[0].tolist() == pytest.approx([0.0, 512.0, 0.0])


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_one_hot_theta_gives_the_exported_network_peak(branch):
    supernet = PeakMemory(schedule_from_graph(traced(TinySuperNet(), (2, 4, 4))))
    exported = PeakMemory(schedule_from_graph(traced(TinySuperNet(keep=(branch,)), (2, 4, 4))))
    one_hot = torch.nn.functional.one_hot(torch.tensor(branch), 3).to(F64)
    empty = torch.zeros(0, dtype=F64)
    assert supernet(empty, one_hot).item() == exported(empty).item() == 64 * (8, 12, 6)[branch]


class DenseBlock(nn.Module):
    """x (3×4) -> conv(5) -> cat(x, conv) (8 channels, of which 5 masked)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 1)

    def forward(self, x):
        return torch.cat([x, self.conv(x)], dim=1)


def test_concatenation_sums_masked_and_fixed_channels():
    gm = traced(DenseBlock(), (3, 4))
    sched = schedule_from_graph(gm, {"conv": 0, "cat": ChannelSum(((0, 1.0),), 3.0)}, n_counts=1)
    # elements (4 per channel): x 3 | x+conv 3+n | x+conv+cat 3+n+(3+n) | cat 3+n;  n = 2.5
    assert PeakMemory(sched).step_bytes(counts(2.5)).tolist() == [4 * 4 * e for e in (3, 5.5, 11, 5.5)]
    with pytest.raises(TypeError, match=r"channels of node 'cat' must be a count index \(int\) or a ChannelSum"):
        schedule_from_graph(gm, {"cat": ((0, 1.0),)}, n_counts=1)


def test_tcn():
    gm = traced(TinyTCN(), (2, 16))
    shared = {name: 0 for name in ("conv1", "relu", "pad2", "conv2", "add")}
    peak = PeakMemory(schedule_from_graph(gm, shared, n_counts=1))
    # elements: x 32 | x+pad1 68 | pad1+conv1 36+16n | conv1+relu 32n | relu+pad2 36n |
    # relu+pad2+conv2 52n (the residual keeps relu) | relu+conv2+add 48n | add 16n
    n = 4.0
    expected = [32, 68, 36 + 16 * n, 32 * n, 36 * n, 52 * n, 48 * n, 16 * n]
    assert peak.step_bytes(counts(n)).tolist() == [4 * e for e in expected]
    assert peak_and_grad(peak, counts(4)) == (832.0, [208.0])
    assert peak_and_grad(peak, counts(1)) == (272.0, [0.0])    # the first pad dominates


def nested_schedule() -> ActivationSchedule:
    """Hand-built: supernet 1 (2 branches) nested in branch 0 of supernet 0 (2 branches)."""
    steps = ("x", "a", "inner0", "inner1", "mix1", "b", "mix0", "output")
    paths = ((), ((0, 0),), ((0, 0), (1, 0)), ((0, 0), (1, 1)), ((0, 0),), ((0, 1),), (), ())
    acts = (
        Activation("x", ChannelSum(const=3), 10, 0, (1, 5)),
        Activation("a", ChannelSum(((0, 1.0),)), 10, 1, (2, 3), branch=((0, 0),)),
        Activation("inner0", ChannelSum(((1, 1.0),)), 10, 2, (4,), branch=((0, 0), (1, 0))),
        Activation("inner1", ChannelSum(((1, 2.0),), 1), 10, 3, (4,), branch=((0, 0), (1, 1))),
        Activation("mix1", ChannelSum(((1, 1.0),)), 10, 4, (6,), inplace=True, branch=((0, 0),)),
        Activation("b", ChannelSum(((0, 1.0), (1, 1.0))), 10, 5, (6,), branch=((0, 1),)),
        Activation("mix0", ChannelSum(((1, 1.0),)), 10, 6, (7,), inplace=True),
    )
    return ActivationSchedule(steps, paths, acts, n_counts=2, n_choices=(2, 2), bytes_per_element=1)


def test_nested_supernets_weigh_by_the_product_of_thetas():
    peak = PeakMemory(nested_schedule())
    c = counts(3, 4)
    theta = torch.tensor([0.6, 0.4, 0.25, 0.75], dtype=F64)
    # inner1 step: x is dead (its readers are a, already run, and b, in the other branch of
    # supernet 0); a (θ0·3, read by inner1) + inner1 (θ0·θ(1,1)·(2·4 + 1)); inner0 is in the other
    # branch of supernet 1
    inner1 = 10 * (0.6 * 3 + 0.6 * 0.75 * 9)
    assert peak.step_bytes(c, theta)[3].item() == pytest.approx(inner1)
    # b step (branch 1 of supernet 0): x (3) + b (θ1·(3 + 4))
    assert peak.step_bytes(c, theta)[5].item() == pytest.approx(10 * (3 + 0.4 * 7))


@pytest.mark.parametrize("build", ["plain", "residual", "supernet", "tcn", "nested"])
def test_fast_equals_reference_and_finite_differences(build):
    if build == "nested":
        sched, n_theta = nested_schedule(), 4
    else:
        model, shape, channels, n = {
            "plain": (PlainCNN(), (1, 6, 6), {"conv1": 0, "relu": 0, "pool": 0, "conv2": 1}, 2),
            "residual": (ResidualBlock(), (4, 8), {"conv1": 0, "relu": 0}, 1),
            "supernet": (TinySuperNet(), (2, 4, 4), {"stem": 0, "b0": 1, "b1_0": 2, "b1_1": 1}, 3),
            "tcn": (TinyTCN(), (2, 16), {"conv1": 0, "relu": 0, "pad2": 0, "conv2": 0, "add": 0}, 1),
        }[build]
        sched = schedule_from_graph(traced(model, shape), channels, n_counts=n)
        n_theta = sum(sched.n_choices)
    peak = PeakMemory(sched)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        c = (1 + 6 * torch.rand(sched.n_counts, generator=gen, dtype=F64)).requires_grad_()
        theta = torch.softmax(torch.randn(n_theta, generator=gen, dtype=F64), 0).requires_grad_() \
            if n_theta else None
        inputs = (c,) if theta is None else (c, theta)
        fast, ref = peak(*inputs), peak.reference(*inputs)
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=0)
        for a, b in zip(torch.autograd.grad(fast, inputs), torch.autograd.grad(ref, inputs)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
        assert torch.autograd.gradcheck(peak, inputs)


# ---- errors ------------------------------------------------------------------------------------

def test_bad_inputs_are_errors_naming_them():
    peak = PeakMemory(schedule_from_graph(traced(TinySuperNet(), (2, 4, 4))))
    with pytest.raises(ValueError, match=r"supernets with \[3\] branches; pass theta"):
        peak(torch.zeros(0))
    with pytest.raises(ValueError, match=r"theta must have shape \(3,\)"):
        peak(torch.zeros(0), torch.ones(2))
    with pytest.raises(ValueError, match=r"counts must be a floating tensor of shape \(0,\)"):
        peak(torch.zeros(2), torch.ones(3))
    gm = traced(ResidualBlock(), (4, 8))
    with pytest.raises(ValueError, match=r"channels given for \['conv9'\], which are not tensor nodes"):
        schedule_from_graph(gm, {"conv9": 0}, n_counts=1)
    with pytest.raises(ValueError, match=r"activation 'conv1' uses counts \[2\] but there are 1"):
        schedule_from_graph(gm, {"conv1": 2}, n_counts=1)
    with pytest.raises(ValueError, match=r"activation 'y' has producer 2 and consumers \(1,\)"):
        ActivationSchedule(("a", "b", "c"), ((),) * 3, (Activation("y", ChannelSum(const=1), 1, 2, (1,)),))


def test_graph_without_shapes_or_with_tuple_outputs_is_an_error():
    from plinio.graph.tracing import trace

    with pytest.raises(ValueError, match=r"input 'x' has no recorded shape; run plinio.graph.tracing.propagate_shapes"):
        schedule_from_graph(trace(ResidualBlock()))

    class Split(nn.Module):
        def forward(self, x):
            a, b = torch.chunk(x, 2, dim=1)
            return a * b

    with pytest.raises(NotImplementedError, match=r"node 'chunk' .* returns several tensors"):
        schedule_from_graph(traced(Split(), (4, 8)))
