"""Which costs a DNAS wrapper computes, which one is the regularizer, and its cost targets
(README "Costs and budgets").

A wrapper always has PLiNIO's built-ins ``size`` (alias ``params``) and ``macs``; ``cost=``
adds named ``plinio.cost`` specs (a built-in name, a spec, a callable, or a dict name ->
any of these). ``regularizer`` names the cost ``get_regularization_loss()`` returns.

With ``targets={name: budget}`` the loss is a ``plinio.cost.targets.CostTargets`` term
instead: each targeted cost is bounded, penalised by its relative excess over the budget
(evaluated on the network ``arch_export()`` would give: binarized masks, the argmax
branch, straight-through gradients), with a strength that ``update_targets()`` grows while
the budget is missed. The regularizer, if one is named, is minimized besides, divided by
its value at construction so that its term starts at 1.
"""
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from plinio.cost.peak_memory import PeakMemoryCost
from plinio.cost.specs import MACS, PARAMS, CostArg, CostSpec, MacsCost, ParamsCost, resolve_costs
from plinio.cost.targets import CostTargets
from plinio.safety import check_nas_parameters

BUILTIN_REGULARIZERS = ("size", "macs")
BUILTIN_COSTS: Dict[str, CostSpec] = {"size": PARAMS, "params": PARAMS, "macs": MACS}
"""The costs every wrapper has (``params`` is another name of ``size``)."""

Evaluate = Callable[[str, bool], torch.Tensor]
"""``wrapper.get_cost(name, binarized)``."""


def builtin_metric(spec: Union[CostSpec, PeakMemoryCost]) -> Optional[str]:
    """'size' or 'macs' for the built-in specs (which keep PLiNIO's definition), else None. By
    exact type, not identity: a deep copy or an unpickled wrapper holds copies of them."""
    return "size" if type(spec) is ParamsCost else "macs" if type(spec) is MacsCost else None


class RegularizerNames:
    """``supported_regularizers()``: on the class, PLiNIO's ``('size', 'macs')``; on a
    wrapper, those and the costs it was given with ``cost=``."""

    def __get__(self, instance: Any, owner: type) -> Callable[[], Tuple[str, ...]]:
        def supported_regularizers() -> Tuple[str, ...]:
            """Names accepted by ``regularizer``."""
            if instance is None or "_cost_selection" not in instance.__dict__:
                return BUILTIN_REGULARIZERS
            return instance._cost_selection.regularizers
        return supported_regularizers


class CostSelection:
    """The configured costs, the regularizer and the targets of one wrapper."""

    def __init__(self, owner: str, regularizer: Optional[str], cost: Optional[CostArg],
                 targets: Optional[Mapping[str, float]]) -> None:
        self.owner = owner
        user = resolve_costs(cost) if cost is not None else {}
        for name, spec in user.items():
            if name in BUILTIN_COSTS and spec is not BUILTIN_COSTS[name]:
                raise ValueError(f"{owner}: cost name '{name}' is the built-in {name} cost; give your spec "
                                 f"another name (e.g. cost={{'my_{name}': spec}})")
        self.specs: Dict[str, Union[CostSpec, PeakMemoryCost]] = {**BUILTIN_COSTS, **user}
        self.regularizers: Tuple[str, ...] = BUILTIN_REGULARIZERS + tuple(
            n for n in user if n not in BUILTIN_REGULARIZERS)
        self.targets: Optional[CostTargets] = None
        if targets is not None:
            if not isinstance(targets, Mapping):
                raise TypeError(f"{owner}: targets must be a dict cost name -> budget, got {type(targets).__name__}")
            self.targets = CostTargets(targets, known_costs=self.specs)
        self._regularizer = self._initial_regularizer(regularizer, user)
        self._scale = 1.0

    @property
    def network_specs(self) -> Dict[str, Union[CostSpec, PeakMemoryCost]]:
        """The configured costs that are not the built-in size / MACs."""
        return {n: s for n, s in self.specs.items() if builtin_metric(s) is None}

    def _initial_regularizer(self, regularizer: Optional[str], user: Mapping[str, Any]) -> Optional[str]:
        if regularizer is not None or self.targets is not None:
            return self.check_regularizer(regularizer)
        if not user:
            return "size"
        if len(user) == 1:
            return next(iter(user))
        raise ValueError(f"{self.owner}: several costs were given ({list(user)}); say which one "
                         f"get_regularization_loss() returns with regularizer=, or bound them with targets=")

    def check_regularizer(self, value: Any) -> Optional[str]:
        """``value`` if it names a regularizer (None: only the targets, in target mode)."""
        if value is None and self.targets is not None:
            return None
        if value not in self.regularizers:
            raise ValueError(f"{self.owner}: unknown regularizer {value!r}; allowed values are {self.regularizers}")
        if self.targets is not None and value in self.targets.target_names:
            raise ValueError(f"{self.owner}: '{value}' has a target; the regularizer is the cost minimized "
                             f"besides the targets (another cost, or None)")
        return value

    def check_name(self, name: Any) -> str:
        """``name`` if a cost of that name is configured."""
        if name not in self.specs:
            raise ValueError(f"{self.owner}: unknown cost {name!r}; the costs are {tuple(self.specs)} "
                             f"(add one with cost=..., e.g. cost='peak_memory')")
        return name

    @property
    def regularizer(self) -> Optional[str]:
        """The cost minimized (None: only the targets)."""
        return self._regularizer

    def set_regularizer(self, value: Any, evaluate: Evaluate) -> None:
        """Change the minimized cost (its scale is its current value in target mode)."""
        name = self.check_regularizer(value)
        scale = self._measure_scale(name, evaluate)
        self._regularizer, self._scale = name, scale

    def bind(self, evaluate: Evaluate) -> None:
        """Called once the wrapper can evaluate its costs: measures the scale of the
        minimized cost in target mode."""
        self._scale = self._measure_scale(self._regularizer, evaluate)

    def _measure_scale(self, name: Optional[str], evaluate: Evaluate) -> float:
        if self.targets is None or name is None:
            return 1.0
        with torch.no_grad():
            value = float(evaluate(name, False))
        if not value > 0:
            raise ValueError(f"{self.owner}: the minimized cost '{name}' is {value} for the unsearched network; "
                             f"a cost minimized next to targets is divided by that value, so it must be positive")
        return value

    def loss(self, evaluate: Evaluate) -> torch.Tensor:
        """The regularization loss (see the module docstring)."""
        if self.targets is None:
            return evaluate(self._regularizer, False)
        loss = self.targets({name: evaluate(name, True) for name in self.targets.target_names})
        if self._regularizer is not None:
            loss = loss + evaluate(self._regularizer, False) / self._scale
        return loss

    def _checked_targets(self) -> CostTargets:
        if self.targets is None:
            raise RuntimeError(f"{self.owner}: no targets were given; construct it with targets={{name: budget}}")
        return self.targets

    def update(self, evaluate: Evaluate) -> None:
        """Grow the strength of every missed target (no host synchronisation)."""
        targets = self._checked_targets()
        with torch.no_grad():
            targets.update({name: evaluate(name, True) for name in targets.target_names})

    def met(self, evaluate: Evaluate) -> Dict[str, bool]:
        """Whether the exported network meets each target (synchronises)."""
        targets = self._checked_targets()
        with torch.no_grad():
            return targets.met({name: evaluate(name, True) for name in targets.target_names})


def evaluated(wrapper: Any, where: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` through ``wrapper.checked_cost``; a ``FloatingPointError`` raised by a
    spec is preceded by the check that names a diverged architectural parameter."""
    try:
        value = compute()
    except FloatingPointError:
        check_nas_parameters(wrapper, where)
        raise
    return wrapper.checked_cost(value, where)
