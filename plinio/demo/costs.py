"""Parameter and MAC counts of plain (exported) models, measured with forward hooks, and
their peak activation memory.

The counting rule is the library's static branch cost (``plinio.cost.plain_counts``,
docs/behaviour.md §4.2), so the numbers of an exported network and of the unsearched supernet
are comparable: parameters = every parameter (weights, biases, BatchNorm affine); MACs = for
each call of a parametric layer, its parameter count times the number of output positions
for convolutions, and its parameter count for any other layer (Linear, BatchNorm).
"""
import copy
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.cost.peak_memory import PeakMemoryCost, default_inplace
from plinio.cost.plain_counts import direct_param_count, forward_macs
from plinio.graph.tracing import propagate_shapes, trace
from plinio.methods.pit_supernet import PITSuperNetModule
from plinio.methods.pit_supernet.nn import PITSuperNetCombiner


@dataclass(frozen=True)
class Cost:
    """Number of parameters and of multiply-accumulates for one input sample."""

    params: float
    macs: float


def layer_costs(model: nn.Module, input_shape: Tuple[int, ...]) -> Dict[str, Cost]:
    """Per parametric layer (qualified name): its parameters and its MACs summed over calls.

    Supernet combiners are skipped: their ``alpha`` chooses the architecture and is not part
    of any network the search can produce. Runs a copy of ``model`` on one zero sample of
    ``input_shape`` (no batch dimension), in eval mode without gradients, so the caller's
    model and its buffers are left untouched.
    """
    probe = copy.deepcopy(model).eval()
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    layers = {name: module for name, module in probe.named_modules()
              if direct_param_count(module) > 0 and not isinstance(module, PITSuperNetCombiner)}
    sample = torch.zeros((1,) + tuple(input_shape), device=device)
    macs = forward_macs(probe, layers, lambda: probe(sample))
    return {name: Cost(float(direct_param_count(module)), float(macs[name]))
            for name, module in layers.items()}


def model_cost(model: nn.Module, input_shape: Tuple[int, ...]) -> Cost:
    """Total parameters and MACs of a plain model (every layer counted as it runs)."""
    costs = layer_costs(model, input_shape).values()
    return Cost(sum(c.params for c in costs), sum(c.macs for c in costs))


def _branch_weights(model: nn.Module) -> Dict[str, float]:
    """Qualified branch prefix → weight 1/n of that branch (products for nested supernets)."""
    weights: Dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, PITSuperNetModule):
            n = len(module.sn_input_layers)
            for i in range(n):
                prefix = f"{name}.sn_input_layers.{i}" if name else f"sn_input_layers.{i}"
                weights[prefix] = 1.0 / n
    return weights


def expected_supernet_cost(model: nn.Module, input_shape: Tuple[int, ...]) -> Cost:
    """Cost of an unsearched supernet model: branches weighted by θ = 1/n (docs/behaviour.md §4.3 at init).

    Layers outside any supernet count fully; a layer inside branch i of a supernet with n
    branches counts 1/n (the product of such factors when supernets are nested).
    """
    weights = _branch_weights(model)
    params = macs = 0.0
    for name, cost in layer_costs(model, input_shape).items():
        factor = 1.0
        for prefix, weight in weights.items():
            if name == prefix or name.startswith(prefix + "."):
                factor *= weight
        params += factor * cost.params
        macs += factor * cost.macs
    return Cost(params, macs)


def _deployed_inplace(node: fx.Node, module: Optional[nn.Module]) -> bool:
    """Views and in-place ops, and BatchNorm: a deployed network folds it into the
    convolution before it, as the search model does."""
    return default_inplace(node, module) or isinstance(module, nn.modules.batchnorm._BatchNorm)


def peak_memory(model: nn.Module, input_shape: Tuple[int, ...]) -> float:
    """Peak activation bytes (float32, one sample) of a plain model: the ``peak_memory``
    cost's definition (README "Costs and budgets") on the model's own graph. Traces a CPU
    copy; the caller's model is not changed."""
    gm = trace(copy.deepcopy(model).to("cpu").eval())
    propagate_shapes(gm, (torch.zeros((1,) + tuple(input_shape)),))
    return float(PeakMemoryCost(inplace=_deployed_inplace).bind(gm)(torch.zeros(0)))


def measured_costs(model: nn.Module, input_shape: Tuple[int, ...], names: Tuple[str, ...]) -> Dict[str, float]:
    """The costs ``names`` ('size', 'macs', 'peak_memory') of a plain (exported) model."""
    cost = model_cost(model, input_shape)
    values = {"size": cost.params, "macs": cost.macs}
    return {name: values[name] if name in values else peak_memory(model, input_shape) for name in names}
