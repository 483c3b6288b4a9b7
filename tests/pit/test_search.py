"""Search behaviour: optimizing the cost, freezing mask kinds, parameter groups."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.methods import PIT
from tests.models import ToyModel, tcn_regular
from tests.pit.conftest import build


def _thetas(pit, kind):
    cls_attr = {"features": "out_features_masker", "rf": "timestep_masker", "dilation": "dilation_masker"}[kind]
    out = {}
    for name, m in pit.seed.named_modules():
        masker = getattr(m, cls_attr, None)
        if masker is not None and not masker.frozen:
            out[name] = masker.theta.detach().clone()
    return out


@pytest.mark.parametrize("regularizer", ["size", "macs"])
def test_cost_alone_never_increases_and_leaves_weights(regularizer):
    _, pit, _ = build("tcn", regularizer=regularizer)
    weights = {n: p.detach().clone() for n, p in pit.named_net_parameters()}
    opt = torch.optim.Adam(pit.nas_parameters(), lr=0.05)
    costs = []
    for _ in range(10):
        opt.zero_grad()
        loss = pit.get_regularization_loss()
        loss.backward()
        opt.step()
        costs.append(loss.item())
    costs.append(pit.get_regularization_loss().item())
    assert all(b <= a for a, b in zip(costs, costs[1:]))
    assert costs[-1] < costs[0]
    for n, p in pit.named_net_parameters():
        assert torch.equal(p, weights[n]), n


@pytest.mark.parametrize("frozen", ["features", "rf", "dilation"])
def test_frozen_kind_never_changes_while_others_shrink(frozen):
    model = tcn_regular()
    pit = PIT(model, input_shape=model.input_shape, **{f"train_{frozen}": False})
    assert getattr(pit, f"train_{frozen}") is False
    before = {k: _thetas(pit, k) for k in ("features", "rf", "dilation")}
    opt = torch.optim.Adam(pit.nas_parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        pit.get_size().backward()
        opt.step()
    after = {k: _thetas(pit, k) for k in ("features", "rf", "dilation")}
    for kind in before:
        changed = any(not torch.equal(before[kind][n], after[kind][n]) for n in before[kind])
        assert changed == (kind != frozen), kind
        if kind != frozen:
            assert sum(t.sum() for t in after[kind].values()) < sum(t.sum() for t in before[kind].values())
    setattr(pit, f"train_{frozen}", True)
    opt.zero_grad()
    pit.get_size().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pit.nas_parameters())


def test_task_and_cost_training_changes_weights_every_step():
    torch.manual_seed(0)
    pit = PIT(ToyModel(), input_shape=(3, 15))
    x = torch.randn(16, 3, 15)
    y = (x[:, 0].mean(1) > 0).long()
    opt_net = torch.optim.SGD(pit.net_parameters(), lr=0.05)
    opt_nas = torch.optim.Adam(pit.nas_parameters(), lr=0.01)
    for _ in range(4):
        before = [p.detach().clone() for p in pit.net_parameters()]
        opt_net.zero_grad()
        opt_nas.zero_grad()
        loss = F.cross_entropy(pit(x), y) + 1e-4 * pit.get_regularization_loss()
        loss.backward()
        opt_net.step()
        opt_nas.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, pit.net_parameters()))


def test_nas_and_net_parameters_partition_parameters():
    _, pit, _ = build("tcn")
    nas = dict(pit.named_nas_parameters())
    net = dict(pit.named_net_parameters())
    assert not set(nas) & set(net)
    assert set(nas) | set(net) == {n for n, _ in pit.named_parameters()}
    assert len({id(p) for p in pit.nas_parameters()}) == len(nas), "shared maskers appear once"
    named = dict(pit.named_parameters())
    assert all(named[n] is p for n, p in nas.items())
    assert all(n.rsplit(".", 1)[-1] in ("alpha", "beta", "gamma") for n in nas)
    prefixed = dict(pit.named_nas_parameters(prefix="model"))
    assert set(prefixed) == {f"model.{n}" for n in nas}
    assert {n for n, _ in pit.named_net_parameters(prefix="m")} == {f"m.{n}" for n in net}


def test_replacing_a_masker_parameter_counts_in_nas_parameters_and_costs():
    pit = PIT(ToyModel(), input_shape=(3, 15))
    masker = pit.seed.conv2.out_features_masker
    masker.alpha = nn.Parameter(torch.zeros(20))
    assert any(p is masker.alpha for p in pit.nas_parameters())
    assert pit.get_size().item() == pytest.approx(90 + 90 + 10 * 1 * 5 + 7 * 1 * 2)


def test_costs_follow_the_model_device_and_dtype():
    pit = PIT(ToyModel(), input_shape=(3, 15))
    pit.double()
    assert pit.get_size().dtype == torch.float32
    assert pit.get_size().item() == 1460


def test_state_dict_round_trip_keeps_masks_and_switches():
    _, pit, _ = build("toy")
    with torch.no_grad():
        pit.seed.conv2.out_features_masker.alpha[:5] = 0.1
    pit.train_rf = False
    _, other, _ = build("toy")
    other.load_state_dict(pit.state_dict())
    assert other.seed.conv2.out_features_opt == 15
    assert not other.seed.conv2.train_rf
