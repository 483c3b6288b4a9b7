"""Supernet conversion/export steps that do not need the PIT engine."""
import copy

import pytest
import torch
import torch.fx
import torch.nn as nn

from bench.models import ResNet8SuperNet
from plinio.methods.pit_supernet import PITSuperNetModule
from plinio.methods.pit_supernet.conversion import find_supernets, probe_supernets, reset_combiners
from plinio.methods.pit_supernet.export import keep_best_branches
from plinio.methods.pit_supernet.nn import PITSuperNetCombiner


class _LeafCombinerTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, PITSuperNetCombiner) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(model, _LeafCombinerTracer().trace(model))


def test_find_supernets_in_definition_order():
    found = find_supernets(ResNet8SuperNet())
    assert list(found) == ["stem", "stack1.conv1", "stack1.conv2", "stack2.conv1",
                           "stack2.conv2", "stack3.conv1", "stack3.conv2"]


def test_nested_supernets_are_rejected():
    inner = PITSuperNetModule([nn.Identity(), nn.ReLU()])
    outer = nn.Sequential(PITSuperNetModule([inner, nn.Identity()]))
    with pytest.raises(NotImplementedError, match="'0.sn_input_layers.0' is nested inside supernet '0'"):
        find_supernets(outer)


class _Mismatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), PITSuperNetModule(
            [nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3), nn.Identity()]))

    def forward(self, x):
        return self.body(x)


def test_probe_names_supernet_branch_and_both_shapes():
    model = _Mismatch()
    with pytest.raises(ValueError) as info:
        probe_supernets(model, find_supernets(model), lambda: model(torch.zeros(1, 3, 8, 8)))
    msg = str(info.value)
    assert "branch 1 of supernet 'body.1'" in msg
    assert "(1, 4, 6, 6)" in msg and "(1, 4, 8, 8)" in msg


def test_probe_reports_models_that_cannot_run_on_the_shape():
    model = ResNet8SuperNet()
    with pytest.raises(ValueError, match="cannot run on the given input shape"):
        probe_supernets(model, find_supernets(model), lambda: model(torch.zeros(1, 5, 32, 32)))


def test_probe_measures_costs_and_reset_restores_uniform_theta():
    model = ResNet8SuperNet()
    sns = find_supernets(model)
    costs = probe_supernets(model, sns, lambda: model(torch.zeros(1, 3, 32, 32)))
    # stem: conv3x3 3->16 + BN on 32x32
    assert costs["stem"].size[0] == 3 * 16 * 9 + 2 * 16
    assert costs["stem"].macs[0] == 3 * 16 * 9 * 1024 + 2 * 16
    assert costs["stack1.conv1"].size[3] == 0 and len(costs["stack2.conv1"].size) == 3
    combiners = [sn.sn_combiner for sn in sns.values()]
    with torch.no_grad():
        combiners[0].alpha.copy_(torch.tensor([2.0, 0.0, 1.0]))
    assert not torch.allclose(combiners[0].theta_alpha, torch.full((3,), 1 / 3))
    reset_combiners(combiners)
    assert torch.allclose(combiners[0].theta_alpha, torch.full((3,), 1 / 3))


@pytest.mark.parametrize("best", [0, 1, 2, 3])
def test_keep_best_branches_selects_exactly_one_branch(best):
    torch.manual_seed(0)
    model = ResNet8SuperNet().eval()
    gm = _trace(copy.deepcopy(model))
    choice = {f"{name}.sn_combiner": (best if sn.n_layers > best else 0)
              for name, sn in find_supernets(model).items()}
    removed = keep_best_branches(gm, choice)
    assert all(n.target not in choice for n in gm.graph.nodes)
    assert "stack1.conv1.sn_combiner" in removed
    assert not any(isinstance(m, PITSuperNetCombiner) for m in gm.modules())
    # reference: the same network with each supernet replaced by its chosen branch
    expected = copy.deepcopy(model)
    for name, sn in find_supernets(expected).items():
        parent_name, _, attr = name.rpartition(".")
        parent = expected.get_submodule(parent_name) if parent_name else expected
        setattr(parent, attr, sn[choice[f"{name}.sn_combiner"]])
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(gm(x), expected(x), atol=1e-5)


def test_keep_best_branches_rejects_unknown_combiner():
    gm = _trace(ResNet8SuperNet())
    with pytest.raises(ValueError, match="never called"):
        keep_best_branches(gm, {"missing.sn_combiner": 0})


def test_keep_best_branches_removes_only_what_the_choice_made_dead():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.probe = nn.Conv2d(3, 3, 1)
            self.sn = PITSuperNetModule([nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()),
                                         nn.Identity()])

        def forward(self, x):
            self.probe(x)  # output unused: the conversion keeps such layers
            return self.sn(x)

    gm = _trace(Net())
    removed = keep_best_branches(gm, {"sn.sn_combiner": 1})
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets == ["probe", "sn.sn_input_layers.1"]
    assert {"sn.sn_input_layers.0.0", "sn.sn_input_layers.0.1", "sn.sn_combiner"} <= set(removed)
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(gm(x), x)
