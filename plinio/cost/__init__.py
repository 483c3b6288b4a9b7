"""Layer-agnostic costs (README "Costs and budgets"): a cost is a function of one layer's or
op's geometry (``geometry``), given as a spec (``specs``: the built-in ``params`` / ``macs``,
callables, per-kind formulas), read from a latency table measured on the target
(``latency``), or the network's peak activation memory (``peak_memory``); ``targets`` turns
budgets into a regularizer. The methods' cost models (e.g. ``plinio.methods.pit.cost_model``)
evaluate them on their searched networks."""
from plinio.cost.geometry import BUILTIN_KINDS, FUNCTIONAL_KINDS, WEIGHTED_KINDS, LayerGeometry, LayerShape, \
    shapes_from_graph
from plinio.cost.latency import LatencyTable, LatencyTableCost
from plinio.cost.peak_memory import Activation, ActivationSchedule, ChannelSum, PeakMemory, PeakMemoryCost, \
    default_inplace, schedule_from_graph
from plinio.cost.specs import MACS, PARAMS, CostSpec, FunctionCost, LayerCosts, PerKindCost, resolve_costs
from plinio.cost.targets import CostTargets

__all__ = [
    "BUILTIN_KINDS", "FUNCTIONAL_KINDS", "WEIGHTED_KINDS", "LayerGeometry", "LayerShape", "shapes_from_graph",
    "LatencyTable", "LatencyTableCost",
    "Activation", "ActivationSchedule", "ChannelSum", "PeakMemory", "PeakMemoryCost", "default_inplace",
    "schedule_from_graph",
    "MACS", "PARAMS", "CostSpec", "FunctionCost", "LayerCosts", "PerKindCost", "resolve_costs",
    "CostTargets",
]
