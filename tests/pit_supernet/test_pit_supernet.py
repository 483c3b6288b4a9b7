"""PITSuperNet wrapper on the docs/behaviour.md §7 seed example and small supernets (docs/behaviour.md §2, §3, §4)."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models import SimpleSuperNet
from plinio.methods import PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule
from plinio.methods.pit_supernet.nn import PITSuperNetCombiner
from plinio.ops import reference_path_forced
from sn_helpers import randomize_architecture

SEED_SIZES = (9248, 18496, 25632, 0)
SEED_MACS = (37879808, 75759616, 104988672, 0)


class SmallSuperNet(nn.Module):
    """Stem conv → supernet (BN/ReLU, wide inner layer, depthwise, identity branches) → pool →
    linear head. The identity branch makes the stem share the branch outputs' mask."""

    def __init__(self, gumbel: bool = False, hard: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.choice = PITSuperNetModule([
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.Conv2d(16, 8, 1)),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)),
            nn.Identity(),
        ], gumbel_softmax=gumbel, hard_softmax=hard)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.choice(F.relu(self.stem(x))), 2)
        return self.head(torch.flatten(x, 1))


def _small(**kwargs) -> PITSuperNet:
    torch.manual_seed(0)
    return PITSuperNet(SmallSuperNet(**kwargs), input_shape=(3, 8, 8), **{
        k: v for k, v in kwargs.items() if k not in ("gumbel", "hard")})


# ---------------------------------------------------------------- seed example costs
def test_seed_output_shape_and_costs_at_init(seed_search):
    out = seed_search(torch.randn(1, 32, 64, 64))
    assert out.shape == (1, 32, 64, 64)
    static = seed_search._sn_costs.static["conv"]
    assert static.size == SEED_SIZES and static.macs == SEED_MACS


def test_seed_costs_right_after_construction(seed_search):
    size, macs = seed_search.get_size(), seed_search.get_macs()
    assert size.dtype == torch.float32 and size.dim() == 0
    assert size.item() == 13344 and macs.item() == 54657024
    assert size.requires_grad and macs.requires_grad


def test_regularization_loss_follows_regularizer(seed_search):
    assert seed_search.regularizer == "macs"
    assert seed_search.get_regularization_loss().item() == 54657024
    seed_search.regularizer = "size"
    assert seed_search.get_regularization_loss().item() == 13344
    with pytest.raises(ValueError, match="allowed values"):
        seed_search.regularizer = "latency"
    with pytest.raises(ValueError, match="allowed values"):
        PITSuperNet(SimpleSuperNet(), input_shape=(32, 8, 8), regularizer="energy")


def test_costs_follow_theta_formula(seed_search):
    with torch.no_grad():
        seed_search.seed.conv.sn_combiner.alpha.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
    seed_search(torch.randn(1, 32, 16, 16))
    theta = torch.softmax(torch.tensor([0.5, -1.0, 2.0, 0.1]), 0).double()
    expected_size = float((theta * torch.tensor(SEED_SIZES, dtype=torch.float64)).sum())
    expected_macs = float((theta * torch.tensor(SEED_MACS, dtype=torch.float64)).sum())
    assert seed_search.get_size().item() == pytest.approx(expected_size, rel=1e-6)
    assert seed_search.get_macs().item() == pytest.approx(expected_macs, rel=1e-6)


# ---------------------------------------------------------------- θ modes and ICV
def test_icv_at_init_with_four_branches(seed_search):
    assert seed_search.get_total_icv(1e-3).item() == pytest.approx(62.5, rel=1e-5)
    seed_search.fast = False
    assert seed_search.get_total_icv(1e-3).item() == pytest.approx(62.5, rel=1e-5)


def test_icv_matches_definition_after_forward(seed_search):
    with torch.no_grad():
        seed_search.seed.conv.sn_combiner.alpha.copy_(torch.tensor([0.3, 0.1, -0.4, 1.2]))
    seed_search(torch.randn(1, 32, 8, 8))
    theta = seed_search.thetas().detach()
    expected = float(theta.mean() ** 2 / (theta.var(unbiased=True) + 1e-2))
    assert seed_search.get_total_icv(1e-2).item() == pytest.approx(expected, rel=1e-5)


def test_hard_selection_gives_one_hot_theta_and_different_costs(seed_search):
    with torch.no_grad():
        seed_search.seed.conv.sn_combiner.alpha.copy_(torch.tensor([0.1, 0.2, 0.9, 0.3]))
    x = torch.randn(1, 32, 8, 8)
    seed_search(x)
    soft_size, soft_macs = seed_search.get_size().item(), seed_search.get_macs().item()
    seed_search.update_softmax_options(hard=True)
    seed_search(x)
    assert torch.equal(seed_search.thetas().detach(), torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert seed_search.get_size().item() == 25632
    assert seed_search.get_macs().item() == 104988672
    assert seed_search.get_size().item() != soft_size
    assert seed_search.get_macs().item() != soft_macs


def test_temperature_changes_soft_theta_like_softmax(seed_search):
    alpha = torch.tensor([0.4, -0.2, 0.9, 0.0])
    with torch.no_grad():
        seed_search.seed.conv.sn_combiner.alpha.copy_(alpha)
    x = torch.randn(1, 32, 8, 8)
    for temperature in (1.0, 0.2, 5.0):
        seed_search.update_softmax_options(temperature=temperature)
        seed_search(x)
        assert torch.allclose(seed_search.thetas().detach(),
                              torch.softmax(alpha / temperature, 0), atol=1e-6)


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_modes_give_finite_costs(hard):
    search = _small(gumbel=True, hard=hard)
    search.train()
    torch.manual_seed(3)
    out = search(torch.randn(4, 3, 8, 8))
    theta = search.thetas().detach()
    assert torch.isclose(theta.sum(), torch.tensor(1.0))
    if hard:
        assert sorted(theta.tolist()) == [0.0, 0.0, 0.0, 1.0]
    for value in (search.get_size(), search.get_macs(), search.get_total_icv()):
        assert torch.isfinite(value)
    loss = out.square().mean() + 1e-4 * search.get_macs()
    loss.backward()
    alpha = search.seed.choice.sn_combiner.alpha
    assert alpha.grad is not None and torch.count_nonzero(alpha.grad) > 0


def test_update_softmax_temperature_is_deprecated_but_works(seed_search):
    with pytest.warns(DeprecationWarning, match="update_softmax_options"):
        seed_search.update_softmax_temperature(0.5)
    assert seed_search.seed.conv.sn_combiner.softmax_temperature == pytest.approx(0.5)
    with pytest.raises(ValueError, match="temperature"):
        seed_search.update_softmax_options(temperature=-1.0)
    assert seed_search.seed.conv.sn_combiner.softmax_temperature == pytest.approx(0.5)


# ---------------------------------------------------------------- fast == reference
def test_fast_and_reference_paths_agree_on_costs_outputs_and_gradients():
    fast = _small()
    randomize_architecture(fast, seed=4)
    ref = copy.deepcopy(fast)
    ref.fast = False
    assert fast.fast == (not reference_path_forced()) and not ref.fast
    x = torch.randn(3, 3, 8, 8)
    results = []
    for search in (fast, ref):
        search.zero_grad()
        out = search(x)
        loss = out.square().mean() + 1e-3 * search.get_size() + 1e-5 * search.get_macs() \
            + 0.1 * search.get_total_icv()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in search.named_nas_parameters() if p.grad is not None}
        results.append((out.detach(), search.get_size().item(), search.get_macs().item(),
                        search.get_total_icv().item(), grads))
    (o1, s1, m1, i1, g1), (o2, s2, m2, i2, g2) = results
    assert torch.allclose(o1, o2, atol=1e-5)
    assert s1 == pytest.approx(s2, rel=1e-5) and m1 == pytest.approx(m2, rel=1e-5)
    assert i1 == pytest.approx(i2, rel=1e-5)
    assert g1.keys() == g2.keys() and len(g1) >= 2
    for name in g1:
        assert torch.allclose(g1[name], g2[name], rtol=1e-4, atol=1e-6), name


# ---------------------------------------------------------------- gradients and parameters
def test_alpha_gets_gradients_from_task_loss_and_from_regularizer():
    search = _small()
    alpha = search.seed.choice.sn_combiner.alpha
    out = search(torch.randn(2, 3, 8, 8))
    out.square().mean().backward()
    assert alpha.grad is not None and torch.count_nonzero(alpha.grad) > 0
    search.zero_grad()
    search.get_regularization_loss().backward()
    assert alpha.grad is not None and torch.count_nonzero(alpha.grad) > 0


def test_pit_masks_inside_branches_get_gradients():
    search = _small()
    out = search(torch.randn(2, 3, 8, 8))
    (out.square().mean() + 1e-3 * search.get_size()).backward()
    inside = [(n, p) for n, p in search.named_nas_parameters()
              if "choice.sn_input_layers" in n]
    assert [n for n, _ in inside] == ["seed.choice.sn_input_layers.1.0.out_features_masker.alpha"]
    shared = search.seed.get_submodule("choice.sn_input_layers.0.0").out_features_masker
    assert shared is search.seed.stem.out_features_masker
    for name, p in inside + [("shared", shared.alpha)]:
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_nas_parameters_are_every_alpha_and_mask_once():
    search = _small()
    names = [n for n, _ in search.named_nas_parameters()]
    assert len(names) == len(set(names))
    params = list(search.nas_parameters())
    assert len({id(p) for p in params}) == len(params)
    combiners = [m for m in search.seed.modules() if isinstance(m, PITSuperNetCombiner)]
    assert all(any(p is c.alpha for p in params) for c in combiners)
    assert "seed.choice.sn_combiner.alpha" in names
    expected_masks = {n for n, _ in search.named_parameters()
                      if n.endswith(("masker.alpha", "masker.beta", "masker.gamma"))}
    assert expected_masks and expected_masks <= set(names)
    net = {id(p) for p in search.net_parameters()}
    assert net.isdisjoint({id(p) for p in params})
    assert net | {id(p) for p in params} == {id(p) for p in search.parameters()}
    prefixed = [n for n, _ in search.named_nas_parameters(prefix="model")]
    assert prefixed == ["model." + n for n in names]


def test_autoconvert_off_searches_only_the_branch_choice():
    torch.manual_seed(0)
    search = PITSuperNet(SmallSuperNet(), input_shape=(3, 8, 8), autoconvert_layers=False)
    assert [n for n, _ in search.named_nas_parameters()] == ["seed.choice.sn_combiner.alpha"]
    # without PIT layers the costs are the static branch costs only
    static = search._sn_costs.static["choice"]
    assert search.get_size().item() == pytest.approx(sum(static.size) / 4)


# ---------------------------------------------------------------- summary
def test_arch_summary_structure():
    search = _small()
    summary = search.arch_summary()
    assert list(summary) == ["stem", "choice", "head"]
    entry = summary["choice"]
    assert entry["type"] == "PITSuperNetModule"
    branches = entry["supernet_branches"]
    assert list(branches) == ["branch_0", "branch_1", "branch_2", "branch_3"]
    assert branches["branch_0"]["type"] == "Sequential"
    assert branches["branch_3"] == {"type": "Identity", "alpha": pytest.approx(0.25)}
    assert branches["branch_0"]["choice.sn_input_layers.0.0"]["type"] == "PITConv2d"
    assert set(branches["branch_1"]) == {"type", "alpha", "choice.sn_input_layers.1.0",
                                         "choice.sn_input_layers.1.2"}
    assert branches["branch_1"]["choice.sn_input_layers.1.0"]["out_features"] == 16
    assert summary["head"]["type"] == "PITLinear"
    assert str(search) == str(summary)


# ---------------------------------------------------------------- state_dict
def test_state_dict_round_trip_restores_everything():
    search = _small()
    randomize_architecture(search, seed=7)
    search.update_softmax_options(temperature=0.4, hard=True)
    x = torch.randn(2, 3, 8, 8)
    search.train()
    search(x)  # update BN statistics too
    search.eval()
    out = search(x)
    state = search.state_dict()
    fresh = _small()
    fresh.load_state_dict(state)
    fresh.eval()
    comb = fresh.seed.choice.sn_combiner
    assert comb.softmax_temperature == pytest.approx(0.4) and comb.hard_softmax
    assert torch.equal(fresh(x), out)
    assert fresh.get_size().item() == search.get_size().item()
    assert fresh.get_macs().item() == search.get_macs().item()
    for (n1, p1), (n2, p2) in zip(search.named_parameters(), fresh.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_load_state_dict_from_other_architecture_fails_by_key(seed_search):
    search = _small()
    with pytest.raises((RuntimeError, ValueError), match=r"seed\.(conv|choice)\."):
        seed_search.load_state_dict(search.state_dict())


# ---------------------------------------------------------------- bad input
class _Mismatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.block = nn.Sequential(PITSuperNetModule(
            [nn.Conv2d(4, 4, 3, padding=1), nn.Identity(), nn.Conv2d(4, 6, 3, padding=1)]))

    def forward(self, x):
        return self.block(self.stem(x))


def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()])


def _unchanged(model: nn.Module, snap) -> bool:
    state, flags = snap
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state) \
        and flags == [m.training for m in model.modules()]


def test_branch_shape_mismatch_names_supernet_branch_and_shapes():
    model = _Mismatch()
    snap = _snapshot(model)
    with pytest.raises(ValueError) as info:
        PITSuperNet(model, input_shape=(3, 5, 5))
    msg = str(info.value)
    assert "supernet 'block.0'" in msg and "branch 2" in msg
    assert "(1, 6, 5, 5)" in msg and "(1, 4, 5, 5)" in msg
    assert _unchanged(model, snap)


def test_wrong_input_shape_and_non_tensor_example_are_clear_errors():
    model = SmallSuperNet()
    snap = _snapshot(model)
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        PITSuperNet(model, input_shape=[[3, 8, 8]])
    with pytest.raises(ValueError, match="cannot run"):
        PITSuperNet(model, input_shape=(4, 8, 8))
    with pytest.raises(TypeError, match="must be a tensor"):
        PITSuperNet(model, input_example=([1.0, 2.0],))
    with pytest.raises(TypeError, match="expects a single tensor input"):
        model.choice([torch.randn(1, 8, 4, 4)])
    assert _unchanged(model, snap)


def test_conversion_does_not_modify_the_users_model():
    model = SmallSuperNet()
    model.train()
    snap = _snapshot(model)
    search = PITSuperNet(model, input_shape=(3, 8, 8))
    search(torch.randn(2, 3, 8, 8)).sum().backward()
    assert _unchanged(model, snap)
    assert not bool(model.choice.sn_combiner.has_forwarded)
    assert all(p.grad is None for p in model.parameters())


def test_theta_is_uniform_after_construction_even_if_user_ran_the_model():
    torch.manual_seed(0)
    model = SmallSuperNet()
    with torch.no_grad():
        model.choice.sn_combiner.alpha.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    model(torch.randn(1, 3, 8, 8))
    search = PITSuperNet(model, input_shape=(3, 8, 8))
    assert torch.allclose(search.thetas(), torch.full((4,), 0.25))


def test_model_without_supernets_warns():
    with pytest.warns(UserWarning, match="no PITSuperNetModule"):
        search = PITSuperNet(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), input_shape=(3, 6, 6))
    assert search(torch.randn(1, 3, 6, 6)).shape == (1, 4, 4, 4)
    assert search.get_total_icv().item() == 0.0


def test_both_input_shape_and_example_warns_and_uses_example():
    example = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = PITSuperNet(SmallSuperNet(), input_shape=(3, 16, 16), input_example=example)
    assert any("input_example" in str(w.message) for w in caught)
    assert search(example).shape == (2, 5)


def test_nan_alpha_is_reported_by_name(seed_search):
    with torch.no_grad():
        seed_search.seed.conv.sn_combiner.alpha[1] = float("nan")
    seed_search(torch.randn(1, 32, 8, 8))
    with pytest.raises(FloatingPointError, match="conv.sn_combiner.alpha"):
        seed_search.get_size()
    with pytest.raises(FloatingPointError, match="conv.sn_combiner.alpha"):
        seed_search.arch_export()


# ---------------------------------------------------------------- torch.compile
def test_costs_compile_fullgraph_without_recompiles_on_option_changes():
    import torch._dynamo
    search = _small(gumbel=True)
    x = torch.randn(2, 3, 8, 8)

    def regularizer():
        return search.get_regularization_loss() + search.get_total_icv()

    torch._dynamo.reset()
    compiled = torch.compile(regularizer, fullgraph=True, backend="eager")
    search(x)
    assert compiled().item() == pytest.approx(regularizer().item(), rel=1e-6)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for temperature, hard in [(0.5, False), (0.5, True), (2.0, True)]:
            search.update_softmax_options(temperature=temperature, hard=hard)
            search(x)
            value = compiled()
            value.backward()
            assert value.item() == pytest.approx(regularizer().item(), rel=1e-6)


def test_branch_outputs_share_one_mask_that_feeds_the_next_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, padding=1)
            self.sn = PITSuperNetModule([nn.Conv2d(6, 8, 3, padding=1),
                                         nn.Sequential(nn.Conv2d(6, 8, 5, padding=2), nn.ReLU())])
            self.after = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.after(torch.relu(self.sn(self.stem(x))))

    torch.manual_seed(0)
    search = PITSuperNet(Net(), input_shape=(3, 5, 5))
    b0 = search.seed.get_submodule("sn.sn_input_layers.0")
    b1 = search.seed.get_submodule("sn.sn_input_layers.1.0")
    after = search.seed.after
    assert b0.out_features_masker is b1.out_features_masker
    assert after.input_features_calculator.masker is b0.out_features_masker
    assert b0.out_features_masker is not search.seed.stem.out_features_masker
    size_before = search.get_size().item()
    with torch.no_grad():
        b0.out_features_masker.alpha[:3] = 0.0  # prune 3 of the 8 shared channels
    search.eval()
    search.update_softmax_options(hard=True)
    with torch.no_grad():
        search.seed.sn.sn_combiner.alpha.copy_(torch.tensor([0.0, 1.0]))
    x = torch.randn(2, 3, 5, 5)
    exported = search.arch_export(add_bn=False).eval()
    assert exported.get_submodule("sn.sn_input_layers.1.0").out_channels == 5
    assert exported.after.in_channels == 5
    with torch.no_grad():
        assert torch.allclose(exported(x), search(x), atol=1e-5)
    # continuous cost: the layer after the supernet sees Σθ_α input channels
    assert search.get_size().item() < size_before
