"""Static branch costs measured at conversion (docs/behaviour.md §4.2)."""
import torch
import torch.nn as nn

from bench.models import SimpleSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule
from plinio.methods.pit_supernet.costs import layer_branch_index, measure_branch_static_costs


def _measure(model, names, shape):
    supernets = {n: list(model.get_submodule(n).sn_input_layers) for n in names}
    return measure_branch_static_costs(model, supernets, lambda: model(torch.zeros(1, *shape)))


def test_seed_example_fixture():
    model = SimpleSuperNet()
    costs = _measure(model, ["conv"], (32, 64, 64))["conv"]
    assert costs.size == (9248, 18496, 25632, 0)
    assert costs.macs == (37879808, 75759616, 104988672, 0)


def test_linear_and_batchnorm_count_parameters_once_per_call():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.sn = PITSuperNetModule([
                nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)),
                nn.Linear(6, 5, bias=False),
            ])

        def forward(self, x):
            return self.sn(x)

    net = Net()
    net.train()
    stats = net.sn[0][1].running_mean.clone()
    costs = _measure(net, ["sn"], (6,))["sn"]
    assert costs.size == (6 * 5 + 5 + 2 * 5, 30)
    assert costs.macs == (35 + 10, 30)
    # measuring neither changes training flags nor BatchNorm statistics
    assert net.training and net.sn[0][1].training
    assert torch.equal(net.sn[0][1].running_mean, stats)


def test_strided_and_depthwise_convs_use_output_positions():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.sn = PITSuperNetModule([
                nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
                nn.Conv2d(8, 8, 1, stride=2),
            ])

        def forward(self, x):
            return self.sn(x)

    costs = _measure(Net(), ["sn"], (8, 10, 10))["sn"]
    assert costs.size == (72, 72)
    assert costs.macs == (72 * 25, 72 * 25)


def test_layer_branch_index_assigns_layers_to_flat_branches():
    names = ["stem", "a.sn_input_layers.0", "a.sn_input_layers.1.0", "b.sn_input_layers.2",
             "a.sn_input_layers.10", "head"]
    index = layer_branch_index(names, ["a", "b"], [11, 3])
    assert index == [14, 0, 1, 13, 10, 14]
    assert layer_branch_index(["sn_input_layers.1"], [""], [2]) == [1]
