"""Geometry reading, chain composition rules and composed weights (float64, exact math)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.fast.linear_ops import (compose, compose_weights, conv_geometry, dense_weight,
                                    reference_conv)



@pytest.fixture(autouse=True)
def _float64():
    """Exact-math checks in float64; the default dtype is restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _run(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    g, _ = conv_geometry(conv)
    return reference_conv(x, conv.weight, conv.bias, g)


@pytest.mark.parametrize("padding,dilation,k", [("same", 1, 4), ("same", 2, 3), ("valid", 1, 3),
                                                (2, 1, 5), ((1, 0), 1, 3)])
def test_geometry_reproduces_conv2d(padding, dilation, k):
    conv = nn.Conv2d(3, 4, k, padding=padding, dilation=dilation)
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(_run(conv, x), conv(x))
    g, _ = conv_geometry(conv)
    assert g.extent == (dilation * (k - 1) + 1,) * 2


def test_geometry_rejects_non_zero_padding_and_linear():
    g, reason = conv_geometry(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    assert g is None and "padding_mode" in reason
    g, reason = conv_geometry(nn.Linear(3, 3))
    assert g is None and "not a convolution" in reason


def test_dense_weight_equals_grouped_conv():
    conv = nn.Conv1d(6, 9, 3, groups=3, padding=1)
    x = torch.randn(2, 6, 11)
    dense = F.conv1d(x, dense_weight(conv.weight, 3), conv.bias, padding=1)
    torch.testing.assert_close(dense, conv(x))


def _chain_case(first: nn.Module, second: nn.Module, x: torch.Tensor) -> None:
    g1, _ = conv_geometry(first)
    g2, _ = conv_geometry(second)
    g, reason = compose(g1, g2)
    assert g is not None, reason
    w, b = compose_weights((first.weight, first.bias, g1), (second.weight, second.bias, g2))
    torch.testing.assert_close(reference_conv(x, w, b, g), second(first(x)))


@pytest.mark.parametrize("groups1,groups2", [(1, 1), (4, 1), (1, 4), (4, 4), (2, 4)])
def test_conv_then_pointwise_composes_exactly(groups1, groups2):
    first = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=groups1)
    second = nn.Conv2d(8, 8, 1, groups=groups2)
    _chain_case(first, second, torch.randn(2, 4, 9, 7))


@pytest.mark.parametrize("groups", [1, 4])
def test_bias_free_pointwise_then_conv_composes_exactly(groups):
    first = nn.Conv1d(4, 8, 1, bias=False, groups=groups)
    second = nn.Conv1d(8, 4, 5, padding=4, dilation=2, groups=groups)
    _chain_case(first, second, torch.randn(2, 4, 13))


def test_padded_chains_do_not_compose():
    a = conv_geometry(nn.Conv2d(4, 4, 3, padding=1))[0]
    g, reason = compose(a, a)
    assert g is None and "inner zero padding" in reason
    pointwise_with_bias = conv_geometry(nn.Conv2d(4, 4, 1, bias=True))[0]
    assert compose(pointwise_with_bias, a)[0] is None  # its bias would leak into the padding
    padded_pointwise = conv_geometry(nn.Conv2d(4, 4, 1, padding=1))[0]
    assert compose(a, padded_pointwise)[0] is None
    strided_pointwise = conv_geometry(nn.Conv2d(4, 4, 1, stride=2))[0]
    assert compose(a, strided_pointwise)[0] is None
