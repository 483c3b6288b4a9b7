"""PITSuperNetCombiner: θ sampling rules (docs/behaviour.md §3.1), state (§3.2), compile friendliness."""
import pytest
import torch
import torch.nn.functional as F

from plinio.methods.pit_supernet.nn import PITSuperNetCombiner
from plinio.ops.reference import combine as reference_combine


def _outputs(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 5, 5, generator=gen) for _ in range(n)]


def _set_alpha(comb: PITSuperNetCombiner, values):
    with torch.no_grad():
        comb.alpha.copy_(torch.tensor(values))


def test_theta_is_uniform_before_first_forward():
    comb = PITSuperNetCombiner(5)
    _set_alpha(comb, [3.0, -1.0, 0.5, 2.0, 0.0])
    assert torch.equal(comb.theta_alpha, torch.full((5,), 0.2))
    assert torch.allclose(comb.alpha.detach(), torch.tensor([3.0, -1.0, 0.5, 2.0, 0.0]))
    assert torch.allclose(PITSuperNetCombiner(4).alpha, torch.full((4,), 0.25))


def test_soft_theta_follows_softmax_with_temperature():
    comb = PITSuperNetCombiner(4)
    alpha = [0.3, -0.2, 1.5, 0.1]
    _set_alpha(comb, alpha)
    ys = _outputs(4)
    out = comb(ys)
    expected_theta = torch.softmax(torch.tensor(alpha), 0)
    assert torch.allclose(comb.theta_alpha, expected_theta)
    assert torch.allclose(out, sum(t * y for t, y in zip(expected_theta, ys)), atol=1e-6)
    comb.update_softmax_options(temperature=0.25)
    comb(ys)
    cold = torch.softmax(torch.tensor(alpha) / 0.25, 0)
    assert torch.allclose(comb.theta_alpha, cold)
    assert not torch.allclose(cold, expected_theta)
    assert comb.softmax_temperature == pytest.approx(0.25)


def test_hard_without_gumbel_is_one_hot_without_gradient():
    comb = PITSuperNetCombiner(3, hard_softmax=True)
    _set_alpha(comb, [0.1, 0.7, 0.2])
    comb(_outputs(3))
    theta = comb.theta_alpha
    assert torch.equal(theta, torch.tensor([0.0, 1.0, 0.0]))
    (theta * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert comb.alpha.grad is None or torch.count_nonzero(comb.alpha.grad) == 0


def test_soft_theta_gives_gradient_to_alpha():
    comb = PITSuperNetCombiner(3)
    comb(_outputs(3))
    (comb.theta_alpha * torch.tensor([1.0, 2.0, 4.0])).sum().backward()
    assert comb.alpha.grad is not None and torch.count_nonzero(comb.alpha.grad) == 3


def test_gumbel_training_samples_noise_and_eval_does_not():
    torch.manual_seed(0)
    comb = PITSuperNetCombiner(4, gumbel_softmax=True)
    _set_alpha(comb, [0.1, 0.2, 0.3, 0.4])
    ys = _outputs(4)
    comb.train()
    comb(ys)
    first = comb.theta_alpha.detach().clone()
    comb(ys)
    second = comb.theta_alpha.detach().clone()
    assert not torch.allclose(first, second)
    assert torch.isclose(first.sum(), torch.tensor(1.0))
    assert torch.count_nonzero(comb.gumbel_noise) == 4
    comb.eval()
    comb(ys)
    assert torch.count_nonzero(comb.gumbel_noise) == 0
    assert torch.allclose(comb.theta_alpha, torch.softmax(torch.tensor([0.1, 0.2, 0.3, 0.4]), 0))


def test_gumbel_hard_is_one_hot_with_straight_through_gradient():
    torch.manual_seed(1)
    comb = PITSuperNetCombiner(4, gumbel_softmax=True, hard_softmax=True)
    comb.train()
    comb(_outputs(4))
    theta = comb.theta_alpha
    assert torch.equal(theta.detach().sort().values, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    (theta * torch.tensor([1.0, -2.0, 3.0, 0.5])).sum().backward()
    assert torch.count_nonzero(comb.alpha.grad) > 0
    soft = F.softmax((comb.alpha.detach() + comb.gumbel_noise), 0)
    assert torch.argmax(theta) == torch.argmax(soft)


def test_train_selection_switch_detaches_alpha_and_is_state():
    comb = PITSuperNetCombiner(3)
    comb.train_selection = False
    assert comb.train_selection is False
    comb(_outputs(3))
    (comb.theta_alpha * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert comb.alpha.grad is None or torch.count_nonzero(comb.alpha.grad) == 0
    assert comb.alpha.requires_grad
    other = PITSuperNetCombiner(3)
    other.load_state_dict(comb.state_dict())
    assert other.train_selection is False


def test_temperature_and_hard_survive_state_dict():
    comb = PITSuperNetCombiner(4)
    comb.update_softmax_options(temperature=0.3, hard=True)
    comb(_outputs(4))
    state = comb.state_dict()
    for key in ("alpha", "temperature", "hard", "gumbel_noise", "has_forwarded"):
        assert key in state
    fresh = PITSuperNetCombiner(4)
    fresh.load_state_dict(state)
    assert fresh.softmax_temperature == pytest.approx(0.3)
    assert fresh.hard_softmax is True
    assert torch.equal(fresh.theta_alpha, comb.theta_alpha)


def test_update_softmax_options_is_in_place():
    comb = PITSuperNetCombiner(2)
    temp, hard = comb.temperature, comb.hard
    comb.update_softmax_options(temperature=2.0, hard=True)
    assert comb.temperature is temp and comb.hard is hard
    assert temp.dtype == torch.float32 and temp.dim() == 0
    assert bool(hard)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(bad):
    comb = PITSuperNetCombiner(2)
    with pytest.raises(ValueError, match="temperature"):
        comb.update_softmax_options(temperature=bad)
    assert comb.softmax_temperature == 1.0


def test_wrong_number_of_outputs_and_branches():
    with pytest.raises(ValueError, match="at least one branch"):
        PITSuperNetCombiner(0)
    comb = PITSuperNetCombiner(3)
    with pytest.raises(ValueError, match="expects 3 branch outputs, got 2"):
        comb(_outputs(2))


def test_best_layer_index_is_argmax_alpha():
    comb = PITSuperNetCombiner(4)
    _set_alpha(comb, [0.1, -3.0, 2.5, 2.4])
    assert comb.best_layer_index() == 2


def test_fused_and_reference_combine_agree_in_value_and_gradient():
    ys = [y.requires_grad_() for y in _outputs(3, seed=3)]
    fused = PITSuperNetCombiner(3)
    ref = PITSuperNetCombiner(3)
    ref.use_fused_ops = False
    _set_alpha(fused, [0.2, 0.5, -0.1])
    _set_alpha(ref, [0.2, 0.5, -0.1])
    grad = torch.randn(2, 3, 5, 5)
    out_f = fused(ys)
    g_f = torch.autograd.grad(out_f, ys + [fused.alpha], grad)
    out_r = ref(ys)
    g_r = torch.autograd.grad(out_r, ys + [ref.alpha], grad)
    assert torch.allclose(out_f, out_r, atol=1e-6)
    for a, b in zip(g_f, g_r):
        assert torch.allclose(a, b, atol=1e-5)
    manual = reference_combine(ys, torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(manual, 0.5 * ys[0] + 0.25 * ys[1] + 0.25 * ys[2])


def test_forward_compiles_fullgraph_without_recompiling_on_option_changes():
    import torch._dynamo
    torch._dynamo.reset()
    comb = PITSuperNetCombiner(3, gumbel_softmax=True)
    comb.use_fused_ops = False
    compiled = torch.compile(comb, backend="eager", fullgraph=True)
    ys = _outputs(3)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled(ys)
        comb.update_softmax_options(temperature=0.5, hard=True)
        out = compiled(ys)
    assert torch.equal(comb.theta_alpha.detach().sort().values, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(out, reference_combine(ys, comb.theta_alpha.detach()))


def test_reference_backend_env_selects_stack_and_sum(monkeypatch):
    monkeypatch.delenv("PLINIO_BACKEND", raising=False)
    assert PITSuperNetCombiner(2).use_fused_ops
    monkeypatch.setenv("PLINIO_BACKEND", "reference")
    assert not PITSuperNetCombiner(2).use_fused_ops


@pytest.mark.parametrize("gumbel", [False, True])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampled_theta_is_theta_alpha_bit_for_bit(gumbel, training, trainable, dtype):
    """The eager θ of a forward (switches read from their Python mirrors, fewer ops) has the
    values and the α gradient of the buffer-driven formula, exactly (with the selection
    frozen too: α then gets a zero gradient, not none, as from the formula)."""
    comb = PITSuperNetCombiner(4, gumbel_softmax=gumbel).to(dtype)
    _set_alpha(comb, [0.3, -1.2, 0.0, 2.5])
    comb.alpha.data = comb.alpha.data.to(dtype)
    comb.softmax_temperature = 0.7
    comb.train_selection = trainable
    comb.train(training)
    torch.manual_seed(3)
    sampled = comb.sample_theta()
    formula = comb.theta_alpha
    assert torch.equal(sampled, formula) and sampled.requires_grad == formula.requires_grad
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    (grad_sampled,) = torch.autograd.grad((sampled * weights).sum(), comb.alpha)
    (grad_formula,) = torch.autograd.grad((formula * weights).sum(), comb.alpha)
    assert torch.equal(grad_sampled, grad_formula)
