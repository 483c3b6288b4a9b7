"""The soft built-in costs of the fast path (``PITCostModel.layer_costs(False)``, the
regularizer of every search step) run as one autograd function with its backward written
out. Its values must be those of the cost graph (``LayerCosts`` on the counts) bit for bit,
and its gradients autograd's through that graph: on every fixture model (BatchNorm rows,
depthwise groups, residual adds, Conv1d receptive-field and dilation masks, concat,
flatten), with mask values that are negative, exactly 0 or kept alive, frozen masks,
float64, and second derivatives (``create_graph=True``)."""
import pytest
import torch

from tests.pit.conftest import BUILDERS, build, randomize_masks


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
        assert a.dtype == torch.float32 and torch.equal(a, b)
    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(len(model.shapes), generator=gen) for _ in range(2)]
    for pair in ([weights[0], 0 * weights[1]], [0 * weights[0], weights[1]], weights):
        for a, b in zip(_grads(fused, params, pair), _grads(graph, params, pair)):
            assert (a is None) == (b is None)
            if a is not None:
                scale = float(b.abs().max()) + 1.0
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * scale)


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
