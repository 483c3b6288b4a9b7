"""Second derivatives at model level: a loss with an input-gradient penalty
(task + ||d task / d x||²) gives the same α / β / γ / weight gradients on the fast path
(with ``sparse=False``) and the reference path, for PIT and PITSuperNet; where the fast path
cannot give them (hard Gumbel mode, whose skipped branches run without autograd state;
sparse execution) every backward with ``create_graph=True`` raises, so no wrong value can
come out silently."""
import warnings

import pytest
import torch

from bench.models import workloads
from bench.search_step import build_wrapper
from plinio.fast import zero_padded_conv

WORKLOADS = workloads()
RUNTIME_INPUT = {"seed": (32, 4, 4), "linear_supernet": (3, 6, 6), "tcn": (4, 32)}


def _wrapper(name: str, seed: int = 0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = build_wrapper(WORKLOADS[name].factory().double(), WORKLOADS[name].input_shape, fast=True)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in wrapper.named_nas_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64)
                    * (1.0 if pname.endswith("sn_combiner.alpha") else 0.6))
    shape = RUNTIME_INPUT.get(name, WORKLOADS[name].input_shape)
    x = torch.randn((2,) + tuple(shape), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return wrapper, x


def _task(out: torch.Tensor, linear: bool) -> torch.Tensor:
    """A task loss; ``linear``: its gradient w.r.t. the output does not depend on the output."""
    if linear:
        return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    return out.square().mean()


def _penalized_grads(wrapper, x: torch.Tensor, fast: bool, linear: bool):
    wrapper.fast = fast
    wrapper.sparse = False  # sparse execution refuses create_graph (README "Sparse execution")
    x = x.clone().requires_grad_(True)
    torch.manual_seed(3)
    task = _task(wrapper(x), linear)
    grad_x, = torch.autograd.grad(task, x, create_graph=True)
    loss = task + grad_x.square().sum()
    names, params = zip(*wrapper.named_parameters())
    return dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True)))


# merged branches (seed, linear_supernet), hard mode, padded convolutions and PIT alone (tcn)
CASES = [("seed", False, False), ("seed", True, True), ("linear_supernet", False, True), ("tcn", False, False),
         ("tcn", False, True)]


@pytest.mark.parametrize("name, hard, linear", CASES)
def test_input_gradient_penalty_fast_equals_reference(name, hard, linear):
    wrapper, x = _wrapper(name)
    wrapper.eval()
    if hasattr(wrapper, "update_softmax_options"):
        wrapper.update_softmax_options(hard=hard)
    fast = _penalized_grads(wrapper, x, True, linear)
    reference = _penalized_grads(wrapper, x, False, linear)
    nas = {n for n, _ in wrapper.named_nas_parameters()}
    assert nas and all(reference[n] is not None for n in nas if n.endswith(("alpha", "beta", "gamma")))
    for pname, expected in reference.items():
        got = fast[pname]
        if expected is None or got is None:
            assert (got is None or not got.any()) and (expected is None or not expected.any()), pname
            continue
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=pname)


def test_sparse_execution_refuses_create_graph():
    wrapper, x = _wrapper("tcn")
    wrapper.eval()
    wrapper.fast = True
    if not wrapper.sparse:
        pytest.skip(f"no sparse execution here: {wrapper.fast_plan.get('sparse')}")
    task = _task(wrapper(x.requires_grad_(True)), False)
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\) is not supported by sparse"):
        torch.autograd.grad(task, x, create_graph=True)


@pytest.mark.parametrize("pads", [((2,), (0,)), ((0,), (3,)), ((1, 0), (0, 1))])
def test_zero_padded_conv_has_exact_second_derivatives(pads):
    gen = torch.Generator().manual_seed(0)
    ndim = len(pads[0])
    x = torch.randn((1, 2) + (4,) * ndim, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn((2, 2) + (2,) * ndim, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)

    def conv(x, weight, bias):
        return zero_padded_conv(x, weight, bias, pads[0], pads[1], (1,) * ndim, (1,) * ndim, 1)

    assert torch.autograd.gradgradcheck(conv, (x, weight, bias))


def _gumbel_hard_training(name: str):
    wrapper, x = _wrapper(name)
    for m in wrapper.modules():
        if hasattr(m, "gumbel_softmax") and hasattr(m, "sample_theta"):
            m.gumbel_softmax = True
    wrapper.update_softmax_options(hard=True)
    wrapper.sparse = False  # the refusal tested is the hard-mode shortcut's own
    wrapper.train()
    return wrapper, x.requires_grad_(True)


@pytest.mark.parametrize("linear", [False, True])
def test_hard_gumbel_fast_path_refuses_create_graph_every_time(linear):
    """Also when the output gradient is a constant (``linear``): then a once-differentiable
    backward would give plain tensors, silently missing second-order terms."""
    wrapper, x = _gumbel_hard_training("linear_supernet")
    message = (r"plinio fast path: supernet 'blocks\.\d' runs in hard Gumbel mode, where the branches not "
               r"selected are evaluated without autograd state: .* create_graph=True .* needs fast=False")
    task = _task(wrapper(x), linear)
    with pytest.raises(RuntimeError, match=message):  # an input-gradient penalty
        torch.autograd.grad(task, x, create_graph=True)
    task = _task(wrapper(x), linear)
    params = [p for _, p in wrapper.named_net_parameters()]
    with pytest.raises(RuntimeError, match=message):  # a Hessian-vector product over the weights
        torch.autograd.grad(task, params, create_graph=True, allow_unused=True)
    task = _task(wrapper(x), linear)
    task.backward()  # first derivatives stay available
    assert all(p.grad is not None for _, p in wrapper.named_nas_parameters())
    wrapper.fast = False  # the reference path computes every branch with autograd: no refusal
    grad_x, = torch.autograd.grad(_task(wrapper(x), linear), x, create_graph=True)
    grad_x.square().sum().backward()
