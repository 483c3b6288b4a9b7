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


def test_peak_memory_of_an_exported_network_is_the_searchs_prediction():
    """The fixed conv3x3 network: the stem's BatchNorm output (in place, as deployed) and its
    ReLU are 2 × 16 channels × 16×16 positions of 4 bytes at the peak; the supernet's search
    model predicts the same for its export (all α equal: branch 0, conv3x3, in every block)."""
    from plinio.demo.costs import peak_memory
    from plinio.demo.model import fixed_choice_cnn, supernet_cnn
    from plinio.demo.search import wrap_supernet

    assert peak_memory(fixed_choice_cnn("conv3x3"), (1, 16, 16)) == 4 * 2 * 16 * 256
    net = wrap_supernet(supernet_cnn(), (1, 16, 16), "peak_memory", fast=True)
    assert net.regularizer == "peak_memory" and net.cost_targets is None
    assert net.get_cost("peak_memory", binarized=True).item() == peak_memory(net.arch_export(), (1, 16, 16))
    bounded = wrap_supernet(supernet_cnn(), (1, 16, 16), "macs", fast=True, targets=(("peak_memory", 16e3),))
    assert bounded.regularizer is None and bounded.cost_targets.target_names == ("peak_memory",)
