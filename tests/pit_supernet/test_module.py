"""PITSuperNetModule: construction errors, indexing, standalone forward, fx traceability."""
import pytest
import torch
import torch.fx
import torch.nn as nn

from plinio.methods.pit_supernet import PITSuperNetModule
from plinio.methods.pit_supernet.nn import PITSuperNetCombiner


def _branches():
    torch.manual_seed(0)
    return [nn.Conv2d(4, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()),
            nn.Identity()]


def test_members_and_indexing():
    branches = _branches()
    sn = PITSuperNetModule(branches)
    assert isinstance(sn.sn_input_layers, nn.ModuleList)
    assert isinstance(sn.sn_combiner, PITSuperNetCombiner)
    assert sn[0] is branches[0] and sn[2] is branches[2]
    assert len(sn) == 3 and sn.n_layers == 3
    assert sn.sn_combiner.alpha.shape == (3,)


def test_standalone_forward_is_theta_weighted_sum():
    branches = _branches()
    sn = PITSuperNetModule(branches)
    with torch.no_grad():
        sn.sn_combiner.alpha.copy_(torch.tensor([0.4, -0.3, 1.0]))
    x = torch.randn(2, 4, 6, 6)
    theta = torch.softmax(torch.tensor([0.4, -0.3, 1.0]), 0)
    expected = sum(t * b(x) for t, b in zip(theta, branches))
    assert torch.allclose(sn(x), expected, atol=1e-6)


def test_empty_branch_list_is_rejected():
    with pytest.raises(ValueError, match="input_layers is empty"):
        PITSuperNetModule([])


def test_non_module_branch_and_single_module_are_rejected():
    with pytest.raises(TypeError, match="branch 1 is a int"):
        PITSuperNetModule([nn.Identity(), 3])
    with pytest.raises(TypeError, match="wrap it in a list"):
        PITSuperNetModule(nn.Conv2d(2, 2, 1))
    with pytest.raises(TypeError, match="iterable"):
        PITSuperNetModule(5)


def test_non_tensor_input_is_rejected():
    sn = PITSuperNetModule(_branches())
    with pytest.raises(TypeError, match="expects a single tensor input, got list"):
        sn([torch.randn(1, 4, 3, 3)])


def test_options_reach_the_combiner():
    sn = PITSuperNetModule(_branches(), gumbel_softmax=True, hard_softmax=True)
    assert sn.gumbel_softmax and sn.hard_softmax
    sn.update_softmax_options(temperature=0.5, hard=False)
    assert sn.softmax_temperature == pytest.approx(0.5) and not sn.hard_softmax
    sn.train_selection = False
    assert sn.sn_combiner.train_selection is False
    with torch.no_grad():
        sn.sn_combiner.alpha.copy_(torch.tensor([0.0, 2.0, 1.0]))
    assert sn.best_layer_index() == 1


class _LeafCombinerTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, PITSuperNetCombiner) or super().is_leaf_module(m, qualname)


def test_fx_traces_through_to_branches_and_one_combiner_call():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.sn = PITSuperNetModule(_branches())

        def forward(self, x):
            return self.sn(x) + 1

    net = Net()
    graph = _LeafCombinerTracer().trace(net)
    gm = torch.fx.GraphModule(net, graph)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert targets == ["sn.sn_input_layers.0", "sn.sn_input_layers.1.0",
                       "sn.sn_input_layers.1.1", "sn.sn_input_layers.2", "sn.sn_combiner"]
    combiner_node = [n for n in gm.graph.nodes if n.target == "sn.sn_combiner"][0]
    assert len(combiner_node.args[0]) == 3
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(gm(x), net(x))
