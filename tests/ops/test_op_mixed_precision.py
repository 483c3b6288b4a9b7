"""The ops under autocast and with mixed dtypes, on every backend: the dtype policy of
their docstrings (combine: the branches' dtype, promoted as eager PyTorch adds them;
masked weight: the weight's dtype, masks in the parameters'), values against the
reference, and every gradient in its input's dtype."""
import pytest
import torch
import torch.nn.functional as F

import plinio.ops as ops
from plinio.ops import reference
from ops_backends import backend_params, forced, require

ALL_BACKENDS = [pytest.param(("reference", "cpu"), id="reference"), *backend_params()]


def _low_dtypes(device):
    """Autocast's low-precision dtypes to test on `device`."""
    return [torch.bfloat16] if device == "cpu" else [torch.float16, torch.bfloat16]


def _randn(*shape, seed, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(device).requires_grad_()


def _tol(dtype):
    return {"rtol": 2e-2, "atol": 2e-2} if dtype != torch.float32 else {}


def _check_gradient_dtypes(out, inputs):
    grads = torch.autograd.grad(out.float().square().sum(), inputs, retain_graph=True)
    for g, t in zip(grads, inputs):
        assert g.dtype == t.dtype, f"gradient in {g.dtype} for an input in {t.dtype}"
    return grads


@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
@pytest.mark.parametrize("relu", [None, [True, False, True]], ids=["plain", "relu"])
def test_combine_under_autocast(backend_device, relu):
    """A conv branch comes out in the low dtype, an identity branch stays float32: the
    result is float32 (as their eager sum), and stays low when every branch is low."""
    backend, device = backend_device
    require(backend, device)
    for low in _low_dtypes(device):
        x = _randn(2, 4, 9, seed=0, device=device)
        w = _randn(4, 4, 3, seed=1, device=device)
        theta = _randn(3, seed=2, device=device)
        with torch.autocast(device, dtype=low), forced(backend):
            conv_a = F.conv1d(x, w, padding=1)
            conv_b = F.conv1d(x, w.flip(-1), padding=1)
            assert conv_a.dtype == low
            mixed = ops.combine([conv_a, x, conv_b], theta, relu)
            all_low = ops.combine([conv_a, conv_b, conv_a], theta, relu)
        assert mixed.dtype == torch.float32 and all_low.dtype == low
        flags = relu or [False] * 3
        for out, branches in ((mixed, (conv_a, x, conv_b)), (all_low, (conv_a, conv_b, conv_a))):
            act = [torch.relu(t) if r else t for t, r in zip(branches, flags)]
            want = sum(t * a.double() for t, a in zip(theta.double(), act))
            torch.testing.assert_close(out.double(), want, **_tol(low))
        _check_gradient_dtypes(mixed, [x, w, theta])
        _check_gradient_dtypes(all_low, [x, w, theta])


@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
def test_combine_of_mixed_dtypes_matches_reference(backend_device):
    backend, device = backend_device
    require(backend, device)
    low = _low_dtypes(device)[-1]
    ys = [_randn(3, 5, seed=0, device=device, dtype=low), _randn(3, 5, seed=1, device=device),
          _randn(3, 5, seed=2, device=device, dtype=low)]
    theta = _randn(3, seed=3, device=device, dtype=torch.float64)
    with forced(backend):
        out = ops.combine(ys, theta)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference.combine(ys, theta))
    assert [g.dtype for g in _check_gradient_dtypes(out, [*ys, theta])] == [
        low, torch.float32, low, torch.float64]


@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
def test_masked_conv_under_autocast(backend_device):
    """float32 weight and mask parameters under autocast: a float32 masked weight (as
    weight * mask gives in eager mode), which the conv then runs in the low dtype."""
    backend, device = backend_device
    require(backend, device)
    for low in _low_dtypes(device):
        x = _randn(2, 3, 16, seed=0, device=device)
        w, b = _randn(6, 3, 9, seed=1, device=device), _randn(6, seed=2, device=device)
        alpha, beta, gamma = (_randn(6, seed=3, device=device), _randn(9, seed=4, device=device),
                              _randn(4, seed=5, device=device))
        with torch.autocast(device, dtype=low), forced(backend):
            mw, mb, channel, time = ops.pit_masked_weight(w, b, alpha, beta, gamma,
                                                          return_masks=True)
            out = F.conv1d(x, mw, mb, padding=4)
        want = reference.pit_masked_weight(w, b, alpha, beta, gamma)
        assert mw.dtype == mb.dtype == channel.dtype == time.dtype == torch.float32
        assert out.dtype == low
        for got, ref in zip((mw, mb, channel, time), want):
            assert torch.equal(got, ref)
        _check_gradient_dtypes(out, [x, w, b, alpha, beta, gamma])


@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
def test_low_precision_weight_with_float32_mask_parameters(backend_device):
    """The masked weight keeps the weight's dtype, the masks the parameters'; the values
    are exact (masks are 0./1.) and decided on the float32 parameters."""
    backend, device = backend_device
    require(backend, device)
    for low in _low_dtypes(device):
        w, b = (_randn(6, 3, 9, seed=1, device=device, dtype=low),
                _randn(6, seed=2, device=device, dtype=low))
        alpha, beta, gamma = (_randn(6, seed=3, device=device), _randn(9, seed=4, device=device),
                              _randn(4, seed=5, device=device))
        with forced(backend):
            mw, mb, channel, time = ops.pit_masked_weight(w, b, alpha, beta, gamma,
                                                          return_masks=True)
        want_channel, want_time = reference.pit_masks(alpha, beta, gamma)
        assert (mw.dtype, mb.dtype, channel.dtype, time.dtype) == (low, low, torch.float32,
                                                                   torch.float32)
        assert torch.equal(channel, want_channel) and torch.equal(time, want_time)
        assert torch.equal(mw, w * want_channel.to(low)[:, None, None] * want_time.to(low))
        assert torch.equal(mb, b * want_channel.to(low))
        inputs = [w, b, alpha, beta, gamma]
        cot = torch.randn(w.shape, generator=torch.Generator().manual_seed(6)).to(low).float()
        grads = torch.autograd.grad((mw.float() * cot.to(device)).sum() + mb.float().sum(),
                                    inputs)
        assert [g.dtype for g in grads] == [t.dtype for t in inputs]
        masks = want_channel[:, None, None] * want_time
        assert torch.equal(grads[0], (cot.to(device) * masks).to(low))
        assert torch.equal(grads[1], want_channel.to(low))
        # the straight-through gradients, from the float32 view of the same weight
        w32, b32 = w.detach().float(), b.detach().float()
        ref_w, ref_b = reference.pit_masked_weight(w32, b32, alpha, beta, gamma)[:2]
        want = torch.autograd.grad((ref_w * cot.to(device)).sum() + ref_b.sum(),
                                   [alpha, beta, gamma])
        for got, ref in zip(grads[2:], want):
            torch.testing.assert_close(got, ref)


def test_reference_masks_ignore_autocast():
    """θ_γ is a sum of γ entries: in bfloat16 (autocast's matmul) 0.2504 + 0.25 rounds to
    0.5, which the 0.5 threshold drops, while float32 keeps the tap."""
    gamma = torch.tensor([0.2504, 0.25, 1.0])
    plain = reference.pit_masks(None, None, gamma, kernel_size=5)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = reference.pit_masks(None, None, gamma, kernel_size=5)[1]
    assert under_autocast.dtype == torch.float32
    assert torch.equal(plain, under_autocast)
    assert plain[2] == 1.0  # tap 2 of 5: distance 2 from the newest tap, level 1
