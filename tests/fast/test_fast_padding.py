"""Zero paddings absorbed into convolutions: ``zero_padded_conv`` equals ``conv(F.pad(x))``
bitwise (values and gradients) while saving the unpadded input, and the graph pass absorbs
exactly the zero-constant paddings whose only user is a convolution."""
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from bench.search_step import build_pair, saved_activation_bytes
from plinio.fast import absorb_zero_padding, zero_padded_conv
from plinio.methods import PIT, PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule

CASES = [  # (ndim, channels, groups, kernel, stride, dilation, pad_left, pad_right, bias)
    (1, 4, 1, 5, 1, 2, (8,), (0,), True),      # causal TCN padding
    (1, 6, 3, 3, 2, 1, (1,), (3,), False),     # grouped, strided, asymmetric
    (2, 4, 1, 4, 1, 1, (1, 2), (2, 1), True),  # even kernel 'same'-style
    (2, 4, 4, 3, (2, 1), (1, 2), (0, 4), (2, 0), True),  # depthwise
    (2, 3, 1, 3, 1, 1, (1, 1), (1, 1), True),  # symmetric: the conv pads by itself
]


def _inputs(ndim, channels, groups, kernel, bias, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    size = (2, channels) + (11,) * ndim
    x = torch.randn(size, generator=gen, dtype=dtype, requires_grad=True)
    w = torch.randn((5 * groups, channels // groups) + (kernel,) * ndim, generator=gen,
                    dtype=dtype, requires_grad=True)
    b = torch.randn(5 * groups, generator=gen, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


def _spec(pad_left, pad_right):
    spec = []
    for left, right in zip(reversed(pad_left), reversed(pad_right)):
        spec += [left, right]
    return spec


@pytest.mark.parametrize("case", CASES)
def test_zero_padded_conv_is_bitwise_conv_of_padded_input(case):
    ndim, channels, groups, kernel, stride, dilation, pad_left, pad_right, bias = case
    stride = stride if isinstance(stride, tuple) else (stride,) * ndim
    dilation = dilation if isinstance(dilation, tuple) else (dilation,) * ndim
    x, w, b = _inputs(ndim, channels, groups, kernel, bias)
    conv = F.conv1d if ndim == 1 else F.conv2d
    expected = conv(F.pad(x, _spec(pad_left, pad_right)), w, b, stride, 0, dilation, groups)
    got = zero_padded_conv(x, w, b, pad_left, pad_right, stride, dilation, groups)
    assert torch.equal(got, expected)
    cot = torch.randn_like(expected)
    params = [t for t in (x, w, b) if t is not None]
    for g_got, g_exp in zip(torch.autograd.grad(got, params, cot),
                            torch.autograd.grad(expected, params, cot)):
        assert torch.equal(g_got, g_exp)
        assert g_got.stride() == g_exp.stride()  # same layout as autograd's own gradients


@pytest.mark.parametrize("case", CASES[:4])
def test_zero_padded_conv_gradcheck(case):
    ndim, channels, groups, kernel, stride, dilation, pad_left, pad_right, bias = case
    stride = stride if isinstance(stride, tuple) else (stride,) * ndim
    dilation = dilation if isinstance(dilation, tuple) else (dilation,) * ndim
    x, w, b = _inputs(ndim, channels, groups, kernel, bias, torch.float64)
    assert torch.autograd.gradcheck(
        lambda *t: zero_padded_conv(t[0], t[1], t[2] if bias else None, pad_left, pad_right,
                                    stride, dilation, groups),
        tuple(t for t in (x, w, b) if t is not None))


def test_only_the_unpadded_input_is_saved():
    x, w, b = _inputs(1, 4, 1, 5, True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        zero_padded_conv(x, w, b, (8,), (0,), (1,), (2,), 1)
    assert [tuple(t.shape) for t in saved] == [tuple(x.shape), tuple(w.shape)]
    assert saved[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


def test_negative_padding_is_rejected():
    x, w, b = _inputs(1, 4, 1, 3, True)
    with pytest.raises(ValueError, match="non-negative"):
        zero_padded_conv(x, w, b, (-1,), (2,), (1,), (1,), 1)


class _Paddings(nn.Module):
    """Every padding form next to convolutions: which ones may be absorbed is fixed by kind."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ConstantPad1d((4, 0), 0.0)
        self.conv_a = nn.Conv1d(3, 4, 3, dilation=2)          # absorbs the module padding
        self.conv_b = nn.Conv1d(4, 4, 3, padding=1)           # absorbs F.pad(value=0)
        self.conv_c = nn.Conv1d(4, 4, 3)                      # F.pad(value=1): kept
        self.conv_d = nn.Conv1d(4, 4, 3)                      # reflect padding: kept
        self.conv_e = nn.Conv1d(4, 4, 3)                      # the padded tensor has 2 users
        self.conv_f = nn.Conv1d(4, 4, 3, padding=1, padding_mode="circular")  # kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_a(self.pad(x)))
        x = torch.relu(self.conv_b(F.pad(x, (2, 0))))
        x = torch.relu(self.conv_c(F.pad(x, (2, 0), value=1.0)))
        x = torch.relu(self.conv_d(F.pad(x, (1, 1), mode="reflect")))
        padded = F.pad(x, (1, 1))
        x = torch.relu(self.conv_e(padded)) + padded[..., 1:-1]
        x = F.pad(x, (1, 0))
        return self.conv_f(x)


def test_pass_absorbs_exactly_zero_paddings_with_a_single_conv_user():
    model = _Paddings()
    gm = fx.symbolic_trace(model)
    fast, absorbed = absorb_zero_padding(gm)
    assert absorbed == ("conv_a", "conv_b")
    x = torch.randn(2, 3, 20)
    torch.testing.assert_close(fast(x), model(x), rtol=0, atol=0)
    assert sum(n.op == "call_function" and n.target is F.pad for n in gm.graph.nodes) == 5


def _assert_fast_equals_reference(wrapper, x, rtol, atol):
    """Output and every parameter gradient of the wrapper, fast path vs reference path
    (the wrapper is left on the reference path)."""
    results = {}
    for fast in (True, False):
        wrapper.fast = fast
        out = wrapper(x)
        params = [p for p in wrapper.parameters() if p.requires_grad]
        results[fast] = (out,) + torch.autograd.grad(out.square().sum(), params,
                                                     allow_unused=True)
    for a, b in zip(results[True], results[False]):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=rtol, atol=atol)


def test_pit_absorbs_paddings_with_same_values_and_gradients():
    model = _Paddings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pit = PIT(model, input_shape=(3, 20))
    assert pit.fast_plan["absorbed_paddings"] == ("conv_a", "conv_b")
    # fused masks: float rounding only
    _assert_fast_equals_reference(pit, torch.randn(2, 3, 20), rtol=1e-5, atol=1e-6)
    assert pit.fast_plan["absorbed_paddings"] == ()


def test_tcn_saves_about_half_the_activations():
    """The TCN's causal paddings: the reference saves each padded input next to the ReLU
    output it copies; the fast path saves the ReLU output alone."""
    setups = build_pair("tcn", 8, "cpu")
    assert setups["fast"].wrapper.fast_plan["absorbed_paddings"] == \
        ("features.1", "features.5", "features.9", "features.13")
    ratio = saved_activation_bytes(setups["fast"]) / saved_activation_bytes(setups["reference"])
    assert ratio < 0.7


class _PaddedSuperNet(nn.Module):
    """A causal padding in front of a plain conv, next to a supernet, in a Conv1d model."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ConstantPad1d((2, 0), 0.0)
        self.conv = nn.Conv1d(3, 6, 3)
        self.sn = PITSuperNetModule([nn.Conv1d(6, 6, 3, padding=1), nn.Conv1d(6, 6, 5, padding=2),
                                     nn.Sequential(nn.Conv1d(6, 6, 3, padding=1), nn.ReLU()),
                                     nn.Identity()])
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sn(torch.relu(self.conv(self.pad(x))))
        return self.head(x.mean(-1))


@pytest.mark.parametrize("hard", [False, True])
def test_pit_supernet_absorbs_paddings_outside_supernets(hard):
    model = _PaddedSuperNet().double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = PITSuperNet(model, input_shape=(3, 16))
    plan = search.fast_plan
    assert plan["absorbed_paddings"] == ("conv",)
    assert {k: (p.merged, p.separate) for k, p in plan["merge_plans"].items()} == \
        {"sn": ((0, 1, 3), (2,))}
    search.update_softmax_options(temperature=0.7, hard=hard)
    _assert_fast_equals_reference(search, torch.randn(4, 3, 16, dtype=torch.float64),
                                  rtol=1e-9, atol=1e-12)
