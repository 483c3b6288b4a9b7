"""Cost targets: state a budget per cost instead of tuning a regularization strength.

``CostTargets(targets={'macs': 5e5, 'peak_memory': 64 * 1024}, minimize={'latency_table': 1e-3})``
is a regularizer whose loss is

    Σ_m cost_m / scale_m  +  Σ_k s_k · relu(cost_k / target_k − 1)

the costs in ``minimize`` are pushed down (divided by a scale, e.g. their initial value, so
the term is about 1), the costs in ``targets`` are penalised only for their relative excess
over the target. Each strength s_k starts at ``strength`` and is multiplied by ``growth`` at
every ``update(costs)`` while cost_k is above its target (up to ``max_strength``); it stays
put once the target is met, so a cost that drifts back over is pushed back at the strength
that worked. Call ``update`` once per epoch (or per step, with a growth closer to 1). The
strengths are a persistent buffer: ``state_dict()`` / ``load_state_dict()`` resume them.
"""
import math
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"CostTargets: {what} must be a positive finite number, got {value!r}")
    return float(value)


class CostTargets(nn.Module):
    """Regularizer that keeps costs under their targets (see the module docstring)."""

    def __init__(self, targets: Mapping[str, float], minimize: Optional[Mapping[str, float]] = None,
                 strength: float = 1.0, growth: float = 1.5, max_strength: float = 1e4,
                 known_costs: Optional[Iterable[str]] = None) -> None:
        super().__init__()
        minimize = dict(minimize or {})
        if not isinstance(targets, Mapping) or not (targets or minimize):
            raise ValueError(f"CostTargets: give targets (a dict cost name -> budget) and/or minimize "
                             f"(cost name -> scale), got targets={targets!r}")
        known = None if known_costs is None else tuple(known_costs)
        for name in list(targets) + list(minimize):
            if not isinstance(name, str):
                raise TypeError(f"CostTargets: cost names must be strings, got {name!r}")
            if known is not None and name not in known:
                raise ValueError(f"CostTargets: unknown cost name {name!r}; the costs are {list(known)}")
        both = sorted(set(targets) & set(minimize))
        if both:
            raise ValueError(f"CostTargets: {both} both minimized and bounded; a cost is one or the other")
        self.target_names: Tuple[str, ...] = tuple(targets)
        self.minimize_names: Tuple[str, ...] = tuple(minimize)
        budget = [_positive(v, f"the target of '{k}'") for k, v in targets.items()]
        scales = [_positive(v, f"the scale of minimized cost '{k}'") for k, v in minimize.items()]
        self.growth = _positive(growth, "growth")
        if self.growth < 1:
            raise ValueError(f"CostTargets: growth must be >= 1 (the strength grows while a target is "
                             f"missed), got {growth!r}")
        self.max_strength = _positive(max_strength, "max_strength")
        start = min(_positive(strength, "strength"), self.max_strength)
        self.register_buffer("target", torch.tensor(budget, dtype=torch.float64), persistent=False)
        self.register_buffer("scale", torch.tensor(scales, dtype=torch.float64), persistent=False)
        self.register_buffer("strength", torch.full((len(budget),), start, dtype=torch.float64))

    def _stacked(self, costs: Mapping[str, Tensor], names: Tuple[str, ...]) -> Tensor:
        values = []
        for name in names:
            if name not in costs:
                raise KeyError(f"CostTargets: no cost named '{name}' among the given costs {sorted(costs)}")
            value = costs[name]
            if not isinstance(value, Tensor) or value.dim() != 0 or not value.is_floating_point():
                got = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
                raise TypeError(f"CostTargets: cost '{name}' must be a 0-dim floating tensor, got {got}")
            if value.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(torch.isfinite(value)):
                raise FloatingPointError(f"CostTargets: cost '{name}' is {value.item()}")
            values.append(value)
        if not values:
            return self.target.new_zeros(0)
        dtype = values[0].dtype
        for value in values[1:]:
            dtype = torch.promote_types(dtype, value.dtype)
        return torch.stack([v.to(dtype) for v in values])

    def forward(self, costs: Mapping[str, Tensor]) -> Tensor:
        """The loss term: minimized costs over their scale plus the weighted excesses, in the
        costs' dtype."""
        terms = []
        if self.target_names:
            bounded = self._stacked(costs, self.target_names)
            excess = torch.relu(bounded / self.target.to(bounded.dtype) - 1)
            terms.append((self.strength.to(bounded.dtype) * excess).sum())
        if self.minimize_names:
            minimized = self._stacked(costs, self.minimize_names)
            terms.append((minimized / self.scale.to(minimized.dtype)).sum())
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]

    @torch.no_grad()
    def update(self, costs: Mapping[str, Tensor]) -> None:
        """Grow the strength of every missed target (in place, no host synchronisation)."""
        bounded = self._stacked(costs, self.target_names).to(self.strength.dtype)
        grown = torch.clamp(self.strength * self.growth, max=self.max_strength)
        self.strength.copy_(torch.where(bounded > self.target.to(bounded.dtype), grown, self.strength))

    def met(self, costs: Mapping[str, Tensor]) -> Dict[str, bool]:
        """Which targets the costs meet (synchronises: for reports)."""
        bounded = self._stacked(costs, self.target_names).detach().to(self.target.dtype)
        return {name: bool(v <= t) for name, v, t in zip(self.target_names, bounded, self.target)}
