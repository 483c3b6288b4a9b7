"""Second derivatives (``create_graph=True``) through the plinio ops, on every backend.

Where the ops are true functions of their inputs, gradgradcheck compares the double
backward with finite differences. The mask-parameter gradients are straight-through
estimates, which finite differences cannot see: there the second derivatives are compared
with the reference implementation's instead (the contract), including the issue's case of
a loss with an input-gradient penalty.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import plinio.ops as ops
from plinio.ops import reference
from ops_backends import backend_params, forced, require

ROOT = Path(__file__).resolve().parents[2]
ALL_BACKENDS = [pytest.param(("reference", "cpu"), id="reference"), *backend_params()]


def _rand(*shape, seed, device, lo=-1.0, hi=1.0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
    return t.to(device).requires_grad_(requires_grad)


def _away_from_zero(t):
    """Values at least 0.2 away from 0 (ReLU's kink, sign()'s jump)."""
    return (t + 0.2 * t.sign()).detach().requires_grad_(t.requires_grad)


# --------------------------------------------------------------------------- combine

@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
@pytest.mark.parametrize("relu", [None, [True, False, True]], ids=["plain", "relu"])
@pytest.mark.parametrize("frozen", ["none", "theta", "branch"])
def test_combine_gradgradcheck(backend_device, relu, frozen):
    backend, device = backend_device
    require(backend, device)
    ys = [_away_from_zero(_rand(2, 5, seed=i, device=device)) for i in range(3)]
    theta = _rand(3, seed=9, device=device)
    if frozen == "theta":
        theta = theta.detach()
    if frozen == "branch":
        ys[1] = ys[1].detach()
    inputs = [t for t in (*ys, theta) if t.requires_grad]

    def fn(*args):
        it = iter(args)
        branches = [next(it) if y.requires_grad else y for y in ys]
        th = next(it) if theta.requires_grad else theta
        return ops.combine(branches, th, relu)

    with forced(backend):
        assert torch.autograd.gradgradcheck(fn, inputs)


# ------------------------------------------------------------------------- PIT masks

@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
@pytest.mark.parametrize("kinds", ["alpha", "beta", "gamma", "alpha+beta"])
def test_pit_masks_gradgradcheck(backend_device, kinds):
    """One mask kind (or α and β, which do not interact): the straight-through gradient
    sign(p)·g is a true function of the mask gradient g and of p away from 0."""
    backend, device = backend_device
    require(backend, device)
    k = 9
    params = {"alpha": _away_from_zero(_rand(6, seed=1, device=device)),
              "beta": _away_from_zero(_rand(k, seed=2, device=device)),
              "gamma": _away_from_zero(_rand(reference.dilation_levels(k), seed=3,
                                             device=device))}
    names = kinds.split("+")
    inputs = [params[n] for n in names]

    def fn(*args):
        given = dict(zip(names, args))
        channel, time = ops.pit_masks(given.get("alpha"), given.get("beta"), given.get("gamma"),
                                      kernel_size=k)
        return tuple(m for m in (channel, time) if m is not None)

    with forced(backend):
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
@pytest.mark.parametrize("params", ["frozen", "none"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_masked_weight_gradgradcheck(backend_device, params, with_bias):
    """With constant masks (frozen or absent parameters) the op is linear in weight and
    bias: its backward must be differentiable w.r.t. them and the incoming gradient."""
    backend, device = backend_device
    require(backend, device)
    w = _rand(3, 2, 5, seed=1, device=device)
    b = _rand(3, seed=2, device=device) if with_bias else None
    masks = (None, None, None)
    if params == "frozen":
        masks = (_rand(3, seed=3, device=device, requires_grad=False),
                 _rand(5, seed=4, device=device, requires_grad=False),
                 _rand(3, seed=5, device=device, requires_grad=False))
    inputs = [t for t in (w, b) if t is not None]

    def fn(*args):
        return ops.pit_masked_weight(args[0], args[1] if with_bias else None, *masks)[:len(args)]

    with forced(backend):
        assert torch.autograd.gradgradcheck(fn, inputs)


def _second_derivatives(fn, inputs, seed):
    """∂/∂inputs of <∂<u, fn(inputs)>/∂inputs, v> for random u, v (a Hessian-vector
    product, mixed terms included)."""
    outs = [o for o in fn(*inputs) if o is not None]
    g = torch.Generator().manual_seed(seed)
    cots = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in outs]
    first = torch.autograd.grad(outs, inputs, cots, create_graph=True)
    vs = [torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for t in first]
    total = sum((f * v).sum() for f, v in zip(first, vs))
    return torch.autograd.grad(total, inputs, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("layer", ["conv1d_all_masks", "conv1d_beta_gamma", "linear"])
def test_masked_weight_second_derivatives_match_reference(backend_device, layer):
    """The straight-through terms (a mask's gradient inside another gradient) included."""
    backend, device = backend_device
    require(backend, device)
    linear = layer == "linear"
    w = _rand(*((5, 6) if linear else (5, 3, 9)), seed=1, device=device)
    b = _rand(5, seed=2, device=device)
    alpha = None if layer == "conv1d_beta_gamma" else _rand(5, seed=3, device=device)
    beta = None if linear else _rand(9, seed=4, device=device)
    gamma = None if linear else _rand(4, seed=5, device=device)
    inputs = [t for t in (w, b, alpha, beta, gamma) if t is not None]

    def run(op):
        def fn(*args):
            it = iter(args)
            given = [next(it) if t is not None else None for t in (w, b, alpha, beta, gamma)]
            return op(*given)
        return _second_derivatives(fn, inputs, seed=7)

    with forced(backend):
        got = run(lambda *a: ops.pit_masked_weight(*a, return_masks=True))
    want = run(reference.pit_masked_weight)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("backend_device", backend_params())
def test_pit_masks_second_derivatives_match_reference(backend_device):
    backend, device = backend_device
    require(backend, device)
    inputs = [_rand(6, seed=1, device=device), _rand(9, seed=2, device=device),
              _rand(4, seed=3, device=device)]
    with forced(backend):
        got = _second_derivatives(lambda *p: ops.pit_masks(*p, kernel_size=9), inputs, seed=3)
    want = _second_derivatives(lambda *p: reference.pit_masks(*p, kernel_size=9), inputs, seed=3)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r)


# ------------------------------------------------- the input-gradient penalty

def _penalized_loss(x, params):
    """A PIT conv (all three masks) feeding a two-branch supernet (conv + ReLU, identity),
    loss = task + input-gradient penalty: the kind of loss that needs second derivatives."""
    w1, b1, alpha, beta, gamma, w2, theta = params
    x = x.detach().requires_grad_()
    mw, mb = ops.pit_masked_weight(w1, b1, alpha, beta, gamma)
    h = F.conv1d(x, mw, mb, padding=4)
    y = ops.combine([F.conv1d(h, w2, padding=1), h], torch.softmax(theta, 0), [True, False])
    task = (y ** 2).mean()
    (dx,) = torch.autograd.grad(task, x, create_graph=True)
    return task + 0.3 * (dx ** 2).sum()


@pytest.mark.parametrize("backend_device", backend_params())
def test_input_gradient_penalty_matches_reference(backend_device):
    backend, device = backend_device
    require(backend, device)
    params = [_rand(6, 2, 9, seed=1, device=device), _rand(6, seed=2, device=device),
              _rand(6, seed=3, device=device), _rand(9, seed=4, device=device),
              _rand(4, seed=5, device=device), _rand(6, 6, 3, seed=6, device=device),
              _rand(2, seed=7, device=device)]
    x = _rand(3, 2, 20, seed=8, device=device, requires_grad=False)
    grads = {}
    for name in ("reference", backend):
        with forced(name):
            grads[name] = torch.autograd.grad(_penalized_loss(x, params), params)
    for label, got, want in zip(("w1", "b1", "alpha", "beta", "gamma", "w2", "theta"),
                                grads[backend], grads["reference"]):
        torch.testing.assert_close(got, want, msg=lambda m, label=label: f"{label}: {m}")


def test_first_order_gradients_build_no_graph():
    """Without create_graph the fused backward kernels run and return plain tensors."""
    require("cpp", "cpu")
    ys = [_rand(3, 4, seed=i, device="cpu") for i in range(2)]
    theta = _rand(2, seed=5, device="cpu")
    with forced("cpp"):
        out = ops.combine(ys, theta, [True, False])
    grads = torch.autograd.grad(out.sum(), [*ys, theta])
    assert all(g.grad_fn is None and not g.requires_grad for g in grads)
    with forced("cpp"):
        out = ops.combine(ys, theta, [True, False])
    grads = torch.autograd.grad(out.sum(), [*ys, theta], create_graph=True)
    assert grads[0].requires_grad and grads[-1].requires_grad


def test_bare_plinio_C_imports_alone_and_refuses_double_backward():
    """`import plinio._C` works as the first import. Loaded bare, the library lacks the
    differentiable backward formulas that plinio.ops registers: differentiating its
    backward is then an error, never a silent zero."""
    require("cpp", "cpu")
    code = textwrap.dedent("""
        import plinio._C
        import torch
        ys = [torch.randn(3, requires_grad=True) for _ in range(2)]
        theta = torch.rand(2, requires_grad=True)
        out = torch.ops.plinio.combine(ys, theta)
        try:
            torch.autograd.grad(out.sum(), theta, create_graph=True)
        except RuntimeError as e:
            print("ERR", str(e).splitlines()[0])
        torch.autograd.grad(torch.ops.plinio.combine(ys, theta).sum(), theta)
        print("first order OK")
        """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ERR plinio::combine_backward: differentiating this backward" in proc.stdout
    assert "through plinio.ops" in proc.stdout and "first order OK" in proc.stdout
