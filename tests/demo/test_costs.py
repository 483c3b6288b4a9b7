"""Hook-based parameter/MAC counting (the rule of docs/behaviour.md §4.2) of plain and
unsearched models."""
import torch
import torch.nn as nn

from bench.models import SimpleSuperNet
from plinio.demo.costs import expected_supernet_cost, layer_costs, model_cost
from plinio.methods.pit_supernet import PITSuperNetModule


def test_counts_follow_the_static_cost_rule():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32, 3))
    costs = layer_costs(model, (1, 4, 4))
    assert costs["0"].params == 20 and costs["0"].macs == 20 * 16
    assert costs["1"].params == 4 and costs["1"].macs == 4
    assert costs["4"].params == 99 and costs["4"].macs == 99
    total = model_cost(model, (1, 4, 4))
    assert (total.params, total.macs) == (123, 320 + 4 + 99)


def test_a_layer_called_twice_counts_its_macs_twice_and_its_params_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)

        def forward(self, x):
            return self.conv(self.conv(x))

    cost = model_cost(Twice(), (2, 3, 3))
    assert (cost.params, cost.macs) == (4, 2 * 4 * 9)


def test_unsearched_supernet_cost_matches_the_seed_example_and_leaves_model_untouched():
    model = SimpleSuperNet()  # the seed example of docs/behaviour.md §7
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cost = expected_supernet_cost(model, (32, 64, 64))
    # docs/behaviour.md §4.3: with untouched masks the seed example costs 13344 parameters,
    # 54657024 MACs
    assert cost.params == 13344
    assert cost.macs == 54657024
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_layers_outside_supernets_count_fully():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), PITSuperNetModule([nn.Conv2d(4, 4, 1),
                                                                 nn.Identity()]))
    cost = expected_supernet_cost(model, (1, 2, 2))
    assert cost.params == 8 + 20 / 2
    assert cost.macs == 8 * 4 + 20 * 4 / 2
