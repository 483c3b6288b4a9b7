"""plinio.ops.relu / dropout and their C++ ops (plinio::relu_backward, plinio::dropout_noise):
PyTorch's values and gradients, bit for bit, at the kinks too; the ops' fakes, schemas and
autograd (opcheck, gradcheck); clear errors."""
import pytest
import torch
import torch.nn.functional as F

import plinio.ops as ops
from ops_backends import forced, require

pytestmark = pytest.mark.usefixtures("cpp_ops")


@pytest.fixture
def cpp_ops():
    require("cpp", "cpu")


def _with_kinks(shape, upper, seed=0, dtype=torch.float32):
    """Random values with exact 0, -0, upper, values beyond upper and a NaN."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 4).flatten()
    x[:5] = torch.tensor([0.0, -0.0, float(upper or 6.0), 9.0, float("nan")], dtype=dtype)
    return x.reshape(shape)


def _layouts(x):
    """x contiguous, channels_last and as a strided slice."""
    wide = torch.cat([x, x], dim=-1)
    return {"contiguous": x.clone(), "channels_last": x.to(memory_format=torch.channels_last),
            "slice": wide[..., 1:1 + x.shape[-1]]}


@pytest.mark.parametrize("upper", [None, 6.0])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
def test_relu_backward_is_pytorchs_formula_fed_with_the_output(upper, layout):
    x = _with_kinks((2, 3, 4, 5), upper)
    y = torch.relu(x) if upper is None else F.hardtanh(x, 0.0, upper)
    g = _layouts(torch.randn(x.shape))[layout]
    got = torch.ops.plinio.relu_backward(g, y, upper)
    want = (torch.ops.aten.threshold_backward(g, x, 0) if upper is None
            else torch.ops.aten.hardtanh_backward(g, x, 0, upper))
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert got.stride() == torch.empty_like(g).stride()


@pytest.mark.parametrize("upper", [None, 6.0])
def test_relu_matches_pytorch_values_and_gradients(upper):
    x = _with_kinks((3, 4, 6), upper, seed=1, dtype=torch.float64)
    x = x.nan_to_num(0.0).requires_grad_()
    g = torch.randn(x.shape, dtype=torch.float64)
    out = ops.relu(x, upper)
    want = torch.relu(x) if upper is None else F.relu6(x)
    assert "ReLUSavingOutput" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    got_grad, = torch.autograd.grad(out, x, g)
    want_grad, = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)
    assert got_grad[0, 0, 0] == 0 and got_grad[0, 0, 1] == 0  # at x = 0 and x = -0
    if upper is not None:
        assert got_grad[0, 0, 2] == 0  # at x = upper


def test_relu_backward_differentiates_in_grad_only():
    y = torch.relu(torch.randn(3, 5, dtype=torch.float64))
    g = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    for upper in (None, 1.5):
        assert torch.autograd.gradcheck(lambda t: torch.ops.plinio.relu_backward(t, y, upper), (g,))
        assert torch.autograd.gradgradcheck(lambda t: torch.ops.plinio.relu_backward(t, y, upper), (g,))


def test_relu_backward_opcheck():
    x = torch.randn(2, 3, 4, 5)
    y = torch.relu(x)
    g = torch.randn(2, 3, 4, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.plinio.relu_backward, (g, y, None))
    cl = g.detach().to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.plinio.relu_backward, (cl, y.clamp(max=6.0), 6.0))


@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_draws_eagers_noise(p, channels_last):
    x = torch.randn(4, 6, 5, 3)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(x.shape)
    torch.manual_seed(7)
    got = ops.dropout(x, p)
    torch.manual_seed(7)
    want = F.dropout(x, p, training=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0],
                               torch.autograd.grad(want, x, g)[0], rtol=0, atol=0)


def test_dropout_noise_advances_the_generator_as_eager_dropout():
    x = torch.randn(50, 7)
    torch.manual_seed(3)
    ops.dropout(x, 0.3)
    after_plinio = torch.rand(4)
    torch.manual_seed(3)
    F.dropout(x, 0.3, training=True)
    torch.testing.assert_close(after_plinio, torch.rand(4), rtol=0, atol=0)


def test_dropout_noise_is_not_differentiable_and_passes_opcheck():
    x = torch.randn(3, 4, requires_grad=True)
    noise = torch.ops.plinio.dropout_noise(x, 0.25)
    assert not noise.requires_grad
    assert set(noise.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    # random results: only the checks that run the op once
    torch.library.opcheck(torch.ops.plinio.dropout_noise, (x, 0.25),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_dropout_edge_probabilities_are_pytorchs():
    x = torch.randn(5, 4)
    assert torch.equal(ops.dropout(x, 0.0), x)
    assert torch.equal(ops.dropout(x, 1.0), torch.zeros_like(x))


def test_other_backends_run_pytorchs_own_calls():
    x = torch.randn(4, 5, requires_grad=True)
    with forced("reference"):
        assert type(ops.relu(x).grad_fn).__name__ == "ReluBackward0"
        assert type(ops.relu(x, 6.0).grad_fn).__name__ == "HardtanhBackward0"
        torch.manual_seed(0)
        got = ops.dropout(x, 0.5)
    torch.manual_seed(0)
    torch.testing.assert_close(got, F.dropout(x, 0.5, training=True), rtol=0, atol=0)


def test_errors_name_the_op_and_the_fix():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"plinio.ops.relu: upper must be positive"):
        ops.relu(x, 0.0)
    with pytest.raises(ValueError, match=r"plinio.ops.dropout: p must be in \[0, 1\]"):
        ops.dropout(x, 1.5)
    with pytest.raises(RuntimeError, match=r"plinio::relu_backward: grad has shape"):
        torch.ops.plinio.relu_backward(x, torch.randn(3, 2))
    with pytest.raises(RuntimeError, match=r"plinio::relu_backward: grad is Float but"):
        torch.ops.plinio.relu_backward(x, x.double())
    with pytest.raises(RuntimeError, match=r"plinio::dropout_noise: p must be in \(0, 1\)"):
        torch.ops.plinio.dropout_noise(x, 1.0)
    with pytest.raises(RuntimeError, match=r"plinio::dropout_noise: input must be floating"):
        torch.ops.plinio.dropout_noise(torch.ones(3, dtype=torch.long), 0.5)
