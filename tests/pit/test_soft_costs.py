"""The soft built-in costs of the fast path on the CPU (``PITCostModel.layer_costs(False)``,
the regularizer of every search step) run as the native op ``plinio::pit_soft_costs`` and
its backward op. Its values must be those of the cost graph (``LayerCosts`` on the counts,
through autograd) within float rounding (it computes in double), and its gradients
autograd's through that graph: on every fixture model (BatchNorm rows, depthwise groups,
residual adds, Conv1d receptive-field and dilation masks, concat, flatten), with mask values
that are negative, exactly 0 or kept alive, frozen masks, float64, and second derivatives
(``create_graph=True``, which differentiate the graph path)."""
import pytest
import torch

from plinio.methods.pit.cost_model import _native_costs_run
from tests.pit.conftest import BUILDERS, build, randomize_masks

pytestmark = pytest.mark.skipif(not _native_costs_run(torch.zeros(1)),
                                reason="plinio::pit_soft_costs is not available (extension not built)")


def _random_signed_masks(pit, seed: int) -> None:
    """Masks in [-1, 1) with a few exact zeros (|α| and its gradient's sign are exercised)."""
    randomize_masks(pit, seed)
    with torch.no_grad():
        for i, p in enumerate(pit.nas_parameters()):
            p.mul_(2).sub_(1)
            p.view(-1)[i % p.numel()] = 0.0


def _grads(outputs, params, weights):
    loss = sum((w * o).sum() for w, o in zip(weights, outputs))
    return torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_soft_costs_equal_the_graph_path(name, dtype):
    _, pit, _ = build(name)
    pit.to(dtype)
    _random_signed_masks(pit, seed=len(name))
    model = pit._cost_model
    params = list(pit.nas_parameters())
    fused, graph = model.layer_costs(False), model._graph_costs(False)
    assert type(fused[0].grad_fn).__name__ == "_SoftBuiltinCostsBackward"
    for a, b in zip(fused, graph):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-6 if dtype == torch.float32 else 1e-7, atol=0)
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(len(model.shapes), generator=gen) for _ in range(2)]
    for pair in ([weights[0], 0 * weights[1]], [0 * weights[0], weights[1]], weights):
        for a, b in zip(_grads(fused, params, pair), _grads(graph, params, pair)):
            assert (a is None) == (b is None)
            if a is not None:
                scale = float(b.abs().max()) + 1.0
                tol = 1e-5 if dtype == torch.float32 else 1e-9
                torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def test_frozen_masks_get_no_gradient():
    _, pit, _ = build("tcn")
    _random_signed_masks(pit, seed=1)
    pit.train_rf = False
    pit.train_dilation = False
    size, macs = pit._cost_model.layer_costs(False)
    (size.sum() + macs.sum()).backward()
    for name, p in pit.named_nas_parameters():
        frozen = "timestep_masker" in name or "dilation_masker" in name
        assert (p.grad is None or not p.grad.any()) if frozen else p.grad is not None, name


def test_second_derivatives_equal_the_graph_path():
    _, pit, _ = build("tcn")
    pit.to(torch.float64)
    _random_signed_masks(pit, seed=2)
    model = pit._cost_model
    params = list(pit.nas_parameters())

    def grad_norm(costs):
        grads = torch.autograd.grad(costs[1].sum(), params, create_graph=True, allow_unused=True)
        penalty = sum(g.square().sum() for g in grads if g is not None)
        return torch.autograd.grad(penalty, params, allow_unused=True)

    for a, b in zip(grad_norm(model.layer_costs(False)), grad_norm(model._graph_costs(False))):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_binarized_costs_keep_the_graph_path():
    _, pit, _ = build("tcn")
    randomize_masks(pit, seed=4)
    size, _ = pit._cost_model.layer_costs(True)
    assert type(size.grad_fn).__name__ != "_SoftBuiltinCostsBackward"


def _op_arguments():
    _, pit, _ = build("tcn")
    _random_signed_masks(pit, seed=5)
    model = pit._cost_model
    alpha, beta, gamma = (t.detach() for t in model._mask_vectors())
    return model, alpha, beta, gamma


def test_ops_pass_opcheck():
    model, alpha, beta, gamma = _op_arguments()
    tables = list(model._soft_cost_tables)
    size, macs = torch.ops.plinio.pit_soft_costs(alpha, beta, gamma, tables)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.plinio.pit_soft_costs, (alpha, beta, gamma, tables), test_utils=checks)
    torch.library.opcheck(torch.ops.plinio.pit_soft_costs_backward,
                          (torch.randn_like(size), torch.randn_like(macs), alpha, beta, gamma, tables),
                          test_utils=checks)


@pytest.mark.parametrize("case, message", [
    ("few tables", "expected 18 tables"),
    ("table dtype", "table 2 must be a contiguous CPU Double tensor"),
    ("alpha size", "alpha must be a CPU vector of the"),
    ("beta missing", "give beta and gamma"),
    ("beta dtype", "beta must be a CPU vector of"),
])
def test_bad_arguments_are_errors_naming_the_op(case, message):
    model, alpha, beta, gamma = _op_arguments()
    tables = list(model._soft_cost_tables)
    if case == "few tables":
        tables = tables[:-1]
    elif case == "table dtype":
        tables[2] = tables[2].float()
    elif case == "alpha size":
        alpha = alpha[1:]
    elif case == "beta missing":
        beta = None
    else:
        beta = beta.double()
    with pytest.raises(RuntimeError, match=f"plinio::pit_soft_costs: {message}"):
        torch.ops.plinio.pit_soft_costs(alpha, beta, gamma, tables)
