"""plinio.ops.combine against the reference, on every backend present."""
import pytest
import torch

import plinio.ops as ops
from plinio.ops import reference
from ops_backends import backend_params, forced, require

SHAPES = {"linear": (5, 7), "conv1d": (2, 3, 11), "conv2d": (2, 3, 5, 6),
          # several parallel chunks of the CPU loops, the last one and its last tile partial
          "multi_chunk": (3, 70001)}


def _branches(n, shape, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = [torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_() for _ in range(n)]
    theta = torch.randn(n, generator=g, dtype=torch.float32 if dtype != torch.float64
                        else torch.float64).to(device).requires_grad_()
    return ys, theta


def _grads(out, inputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    return torch.autograd.grad(out, inputs, cot)


def _check_against_reference(backend, ys, theta, rtol=1e-5, atol=1e-5):
    with forced(backend):
        out = ops.combine(ys, theta)
    ref = reference.combine(ys, theta)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    got = _grads(out, [*ys, theta])
    want = _grads(ref, [*ys, theta])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    return out


def test_reference_is_the_weighted_sum():
    ys, theta = _branches(3, (4, 5), "cpu")
    want = theta[0] * ys[0] + theta[1] * ys[1] + theta[2] * ys[2]
    torch.testing.assert_close(reference.combine(ys, theta), want)


@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("n", [1, 2, 4, 7])
@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_values_and_gradients(backend_device, n, kind):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(n, SHAPES[kind], device, seed=n)
    _check_against_reference(backend, ys, theta)


@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("n", [16, 17])
def test_many_branches(backend_device, n):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(n, (3, 33), device)
    _check_against_reference(backend, ys, theta)


@pytest.mark.parametrize("backend_device", backend_params())
def test_channels_last_keeps_layout(backend_device):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(3, (2, 4, 5, 3), device)
    ys = [y.detach().to(memory_format=torch.channels_last).requires_grad_() for y in ys]
    out = _check_against_reference(backend, ys, theta)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend_device", [p for p in backend_params() if p.id in ("cpp-cpu", "cuda")])
@pytest.mark.parametrize("relu", [[], [True, False, True]])
def test_backward_returns_the_gradient_layout(backend_device, relu):
    """Channels-last branches (inductor's convolutions) and a contiguous gradient: the branch
    gradients come back in the gradient's layout, the one the fake kernel gives and inductor
    checks, with the values of contiguous branches (the compiled kernels; CUDA refuses ReLU
    flags)."""
    backend, device = backend_device
    require(backend, device)
    if relu and device == "cuda":
        pytest.skip("the ReLU fusion is a CPU kernel feature")
    ys, theta = _branches(3, (2, 4, 5, 3), device)
    ys_cl = [y.detach().to(memory_format=torch.channels_last) for y in ys]
    grad = torch.randn(2, 4, 5, 3, generator=torch.Generator().manual_seed(2)).to(device)
    args = (theta.detach(), [True, True, False], True, relu)
    grads, theta_grad = torch.ops.plinio.combine_backward(grad, ys_cl, *args)
    want, want_theta = torch.ops.plinio.combine_backward(grad, [y.detach() for y in ys], *args)
    assert all(g.is_contiguous() for g in grads[:2])
    for got, expected in zip(grads[:2], want[:2]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(theta_grad, want_theta)
    torch.library.opcheck(torch.ops.plinio.combine_backward, (grad, ys_cl, *args))


@pytest.mark.parametrize("backend_device", backend_params())
def test_non_contiguous_and_mixed_layouts(backend_device):
    backend, device = backend_device
    require(backend, device)
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(4, 6, 10, generator=g).to(device) for _ in range(3)]
    ys = [base[0][:, ::2, 1:8].requires_grad_(),                        # strided slice
          base[1].transpose(1, 2).contiguous().transpose(1, 2)[:, ::2, 1:8].requires_grad_(),
          base[2][:, 1::2, 2:9].clone().requires_grad_()]
    theta = torch.tensor([0.3, -1.2, 0.7], device=device, requires_grad=True)
    _check_against_reference(backend, ys, theta)


@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_forward(backend_device, dtype):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(4, (3, 5, 7), device, dtype=dtype)
    with forced(backend):
        out = ops.combine(ys, theta)
    assert out.dtype == dtype
    exact = sum(t * y.double() for t, y in zip(theta.double(), ys))
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.double(), exact, rtol=tol, atol=tol)
    out.float().sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()


@pytest.mark.parametrize("backend_device", backend_params())
def test_partial_requires_grad(backend_device):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(3, (4, 6), device)
    ys[1] = ys[1].detach()
    theta = theta.detach()
    with forced(backend):
        out = ops.combine(ys, theta)
    out.sum().backward()
    assert ys[1].grad is None
    torch.testing.assert_close(ys[0].grad, torch.full_like(ys[0], float(theta[0])))
    torch.testing.assert_close(ys[2].grad, torch.full_like(ys[2], float(theta[2])))


@pytest.mark.parametrize("backend_device", backend_params())
def test_no_stacked_buffer_is_saved(backend_device):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(4, (8, 16), device)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), forced(backend):
        ops.combine(ys, theta)
    input_ptrs = {y.data_ptr() for y in ys} | {theta.data_ptr()}
    assert saved, "the θ gradient needs the branches: they must be saved"
    for t in saved:
        assert t.data_ptr() in input_ptrs, "combine saved a new buffer instead of its inputs"


@pytest.mark.parametrize("backend_device", backend_params())
def test_gradcheck_float64(backend_device):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(3, (2, 3, 4), device, dtype=torch.float64)
    with forced(backend):
        assert torch.autograd.gradcheck(lambda *a: ops.combine(list(a[:-1]), a[-1]),
                                        (*ys, theta))


@pytest.mark.parametrize("backend_device", [p for p in backend_params()
                                            if p.id != "triton-interp"])
def test_opcheck(backend_device):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(3, (2, 3, 4), device)
    op = torch.ops.plinio.combine if backend != "triton" else torch.ops.plinio.triton_combine
    torch.library.opcheck(op, (ys, theta))
    ys_cl = [y.detach().to(memory_format=torch.channels_last).requires_grad_()
             for y in _branches(2, (2, 3, 4, 5), device)[0]]
    torch.library.opcheck(op, (ys_cl, theta[:2].detach().requires_grad_()))


# ------------------------------------------------------------------- fused ReLU

RELU = [True, False, True, True]


def _relu_then_combine(ys, theta, relu):
    return reference.combine([torch.relu(y) if r else y for y, r in zip(ys, relu)], theta)


@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_relu_flags_match_relu_then_combine(backend_device, kind):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(len(RELU), SHAPES[kind], device, seed=5)
    with forced(backend):
        out = ops.combine(ys, theta, RELU)
    want = _relu_then_combine(ys, theta, RELU)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(out, [*ys, theta]), _grads(want, [*ys, theta])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend_device", backend_params())
def test_relu_edge_values_as_torch_relu(backend_device):
    """Zero gets a zero gradient (as threshold_backward gives) and NaN stays NaN."""
    backend, device = backend_device
    require(backend, device)
    values = torch.tensor([-2.0, -0.0, 0.0, 3.0, float("nan")], device=device)
    ys = [values.clone().requires_grad_(), (values * 2).nan_to_num(0.5).requires_grad_()]
    theta = torch.tensor([0.7, 0.3], device=device, requires_grad=True)
    with forced(backend):
        out = ops.combine(ys, theta, [True, True])
    want = _relu_then_combine(ys, theta, [True, True])
    torch.testing.assert_close(out, want, equal_nan=True)
    cot = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0], device=device)
    got = torch.autograd.grad(out, [*ys, theta], cot)
    ref = torch.autograd.grad(want, [*ys, theta], cot)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, equal_nan=True)


@pytest.mark.parametrize("backend_device", backend_params())
def test_relu_without_theta_gradient_keeps_the_masks(backend_device):
    """θ frozen: the ReLU masks still need the branches, which combine then saves."""
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(3, (4, 6), device, seed=2)
    theta = theta.detach()
    with forced(backend):
        out = ops.combine(ys, theta, [True, False, True])
    out.sum().backward()
    for y, t, r in zip(ys, theta, [True, False, True]):
        mask = (y.detach() > 0).to(y.dtype) if r else torch.ones_like(y)
        torch.testing.assert_close(y.grad, float(t) * mask)


@pytest.mark.parametrize("backend_device", backend_params())
def test_relu_gradcheck_float64(backend_device):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(3, (2, 3, 4), device, dtype=torch.float64, seed=4)
    ys = [(y + 0.2 * y.sign()).detach().requires_grad_() for y in ys]  # away from the kink
    with forced(backend):
        assert torch.autograd.gradcheck(
            lambda *a: ops.combine(list(a[:-1]), a[-1], [True, False, True]), (*ys, theta))


def test_relu_flags_are_checked():
    ys, theta = _branches(2, (3,), "cpu")
    with pytest.raises(ValueError, match="one flag per branch"):
        ops.combine(ys, theta, [True])


def test_compiled_op_checks_relu_flags_too():
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    ys, theta = _branches(2, (3,), "cpu")
    with pytest.raises(RuntimeError, match="one flag per branch"):
        torch.ops.plinio.combine(ys, theta, [True, False, True])


@pytest.mark.parametrize("backend_device", [p for p in backend_params()
                                            if p.id == "cpp-cpu"])
def test_relu_opcheck(backend_device):
    backend, device = backend_device
    require(backend, device)
    ys, theta = _branches(3, (2, 3, 4), device, seed=6)
    torch.library.opcheck(torch.ops.plinio.combine, (ys, theta, [True, False, True]))
    torch.library.opcheck(torch.ops.plinio.combine,
                          (ys, theta.detach(), [False, True, False]))


@pytest.mark.triton_interpret
def test_triton_interpreter_schema_and_autograd_registration():
    require("triton", "cpu")
    from plinio.ops import triton as triton_backend

    triton_backend.ops()
    ys, theta = _branches(2, (3, 4), "cpu")
    # The interpreter runs kernels on real data pointers, so the fake-tensor parts of
    # opcheck only run on a GPU (test_opcheck[triton-cuda]).
    torch.library.opcheck(torch.ops.plinio.triton_combine, (ys, theta),
                          test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_fullgraph(backend):
    require(backend, "cpu")
    ys, theta = _branches(3, (4, 5), "cpu")
    with forced(backend):
        fn = torch.compile(lambda a, b, c, t: ops.combine([a, b, c], t), fullgraph=True,
                           backend="aot_eager")
        out = fn(*ys, theta)
    torch.testing.assert_close(out, reference.combine(ys, theta))


# ------------------------------------------------------------------------ error cases

@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_errors_name_the_wrong_input(backend):
    require(backend, "cpu")
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    theta = torch.ones(2)
    with forced(backend):
        with pytest.raises(ValueError, match="branch 1 has shape"):
            ops.combine([a, torch.randn(3, 2)], theta)
        with pytest.raises(ValueError, match="branch 1 has dtype torch.int64; branches must be"):
            ops.combine([a, b.long()], theta)
        with pytest.raises(ValueError, match="branch 1 is on"):
            ops.combine([a, torch.empty(2, 3, device="meta")], theta)
        with pytest.raises(ValueError, match="theta must be a vector of 2"):
            ops.combine([a, b], torch.ones(3))
        with pytest.raises(ValueError, match="theta must be a vector of 2"):
            ops.combine([a, b], torch.ones(2, 1))
        with pytest.raises(ValueError, match="theta is on"):
            ops.combine([a, b], torch.ones(2, device="meta"))
        with pytest.raises(ValueError, match="theta must be floating point"):
            ops.combine([a, b], torch.ones(2, dtype=torch.int64))
        with pytest.raises(ValueError, match="empty"):
            ops.combine([], theta)
        with pytest.raises(TypeError, match="list or tuple"):
            ops.combine(a, theta)


def test_compiled_op_checks_inputs_too():
    require("cpp", "cpu")
    with pytest.raises(RuntimeError, match="branch 1 has shape"):
        torch.ops.plinio.combine([torch.randn(2), torch.randn(3)], torch.ones(2))
    with pytest.raises(RuntimeError, match="one weight per branch"):
        torch.ops.plinio.combine([torch.randn(2)], torch.ones(2))
    with pytest.raises(RuntimeError, match="branch 1 has dtype"):  # plinio.ops.combine promotes
        torch.ops.plinio.combine([torch.randn(2), torch.randn(2).double()], torch.ones(2))
