"""DNAS base class shared by PIT and PIT-SuperNet (docs/behaviour.md §2, common part)."""
import warnings
from typing import TYPE_CHECKING, Any, ContextManager, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn

from plinio.checkpoint import validate_state_dict
from plinio.cost.specs import CostArg
from plinio.fast import fast_graph
from plinio.fast.autocast import autocast_off
from plinio.fast.compiled_activations import compiled_activations
from plinio.fast.sparse_step import SparseExecution
from plinio.graph.zero_gradients import gradient_facts
from plinio.methods.dnas_base.cost_selection import CostSelection, RegularizerNames
from plinio.methods.dnas_base.sparse_sites import build_sparse_execution
from plinio.methods.dnas_base.switches import checked_switch
from plinio.ops import reference_path_forced
from plinio.safety import check_nas_parameters, debug_checks_enabled

if TYPE_CHECKING:
    from plinio.methods.pit.conversion import PITConversion


class DNAS(nn.Module):
    """Wraps the converted model (``self.seed``) and exposes the search interface.

    Subclasses implement ``get_size``, ``get_macs``, ``_evaluate_cost``, ``arch_export``,
    ``arch_summary`` and ``_nas_parameter_list`` (which parameters are architectural), call
    ``_adopt`` with their conversion before the first ``fast`` assignment, and
    ``_cost_selection.bind(self.get_cost)`` once their costs can be evaluated.
    """

    def __init__(self, regularizer: Optional[str] = "size", cost: Optional[CostArg] = None,
                 targets: Optional[Dict[str, float]] = None) -> None:
        super().__init__()
        self._cost_selection = CostSelection(type(self).__name__, regularizer, cost, targets)
        self.cost_targets = self._cost_selection.targets
        self._fast = False
        self._fast_runner: Optional[Tuple[Any]] = None
        self._sparse_wanted = True
        self._sparse_runner: Optional[Tuple[SparseExecution]] = None
        self._sparse_reason = "the fast path is off"

    # ---- the conversion result ---------------------------------------------------------------
    def _input_shape_or_none(self, input_shape: Optional[Sequence[int]],
                             input_example: Any) -> Optional[Sequence[int]]:
        """``input_shape``, or None with a warning when ``input_example`` is given too (the
        example wins). Call it from the subclass's ``__init__`` (the warning points at its caller)."""
        if input_shape is not None and input_example is not None:
            warnings.warn(f"{type(self).__name__}: both input_shape and input_example were given; "
                          "using input_example", UserWarning, stacklevel=3)
            return None
        return input_shape

    def _adopt(self, conversion: "PITConversion") -> None:
        """Take over a conversion: its graph becomes ``seed`` (the owner of every layer), its
        PIT layers (graph order) and their cost model are kept for the costs and switches."""
        self.seed = conversion.gm
        self._maskers = conversion.maskers()
        self._cost_model = conversion.cost_model
        self._pit_layers = tuple(conversion.layers.items())
        masked = [name for name, info in conversion.analysis.layers.items() if info.role in ("depthwise", "follower")]
        self._gradient_facts = gradient_facts(conversion.gm, conversion.analysis, masked)

    @property
    def cost_model(self) -> nn.Module:
        """Per-layer cost vectors of the PIT layers (``layer_names``, ``layer_costs(binarized)``)."""
        return self._cost_model

    # ---- the fast / reference switch -----------------------------------------------------------
    @property
    def fast(self) -> bool:
        """Exact fast paths on (branch merging, fused combine and masks, absorbed zero
        paddings, vectorized costs). False: the plain-PyTorch reference path (also forced by
        ``PLINIO_BACKEND=reference`` or ``plinio.ops.set_backend('reference')``)."""
        return self._fast

    @fast.setter
    def fast(self, value: bool) -> None:
        self._fast = checked_switch(type(self).__name__, "fast", value) and not reference_path_forced()
        self._cost_model.fast = self._fast
        for _, layer in self._pit_layers:
            if hasattr(layer, "use_fused_ops"):  # the layers with a fused mask path
                layer.use_fused_ops = self._fast
        self._switch_fast_layers(self._fast)
        # the fast graph refers to (does not own) the layers of self.seed
        runner = fast_graph(self.seed) if self._fast else None
        self._fast_runner = (runner,) if runner is not None else None
        self._update_sparse()

    @property
    def sparse(self) -> bool:
        """Exact sparse execution of masked channels (README "Sparse execution"): on the fast
        path, each masked convolution computes only its kept output channels and live input
        channels where that is faster; values and gradients are those of the dense path.
        On by default; False when switched off, with ``fast`` off, or where it does not apply,
        e.g. on a CUDA device, where it was measured slower than dense
        (``plinio.fast.sparse_step.SPARSE_DEVICE_TYPES``); ``fast_plan['sparse']`` says why.
        Eager mode only: under ``torch.compile`` the dense convolutions run."""
        return self._sparse_in_use()[0] is not None

    def _sparse_in_use(self) -> Tuple[Optional[SparseExecution], str]:
        """The sparse execution this model's steps run on its current device, or None, and
        why not ('' when it runs)."""
        if self._sparse_runner is None:
            return None, self._sparse_reason
        execution = self._sparse_runner[0]
        off_device = execution.off_device_reason()
        return (None, off_device) if off_device else (execution, self._sparse_reason)

    @sparse.setter
    def sparse(self, value: bool) -> None:
        self._sparse_wanted = checked_switch(type(self).__name__, "sparse", value)
        self._update_sparse()

    def _update_sparse(self) -> None:
        """(Re)build the sparse execution for the graph in use."""
        self._sparse_runner, self._sparse_reason = None, "switched off (sparse=False)"
        if not self._fast:
            self._sparse_reason = "the fast path is off"
        elif self._sparse_wanted:
            runner = self._fast_runner[0] if self._fast_runner is not None else self.seed
            execution, self._sparse_reason = build_sparse_execution(self.seed, runner, self._pit_layers,
                                                                    self._gradient_facts)
            self._sparse_runner = (execution,) if execution is not None else None

    def _switch_fast_layers(self, fast: bool) -> None:
        """Hook for method-specific layers that have their own fast switch."""

    @property
    def fast_plan(self) -> Dict[str, Any]:
        """What the fast path does to this model: ``merge_plans`` (supernet → merged and
        separate branches), ``unoptimized`` (supernet → reason), ``absorbed_paddings``
        (convolutions computing their input's zero padding) and ``sparse`` (``sites``: the
        convolutions that may run sparse; ``reason``: why none may, else ''). Empty when
        ``fast`` is off."""
        runner = self._fast_runner[0] if self._fast_runner is not None else None
        sparse, reason = self._sparse_in_use()
        return {"merge_plans": dict(getattr(runner, "plinio_merge_plans", {})),
                "unoptimized": dict(getattr(runner, "plinio_unoptimized", {})),
                "absorbed_paddings": tuple(getattr(runner, "plinio_absorbed_paddings", ())),
                "sparse": {"sites": len(sparse.sites) if sparse is not None else 0, "reason": reason}}

    supported_regularizers = RegularizerNames()

    @property
    def regularizer(self) -> Optional[str]:
        """Which cost ``get_regularization_loss`` returns: 'size', 'macs' or a cost given with
        ``cost=``; with ``targets``, the cost minimized besides them (None: none)."""
        return self._cost_selection.regularizer

    @regularizer.setter
    def regularizer(self, value: Optional[str]) -> None:
        self._cost_selection.set_regularizer(value, self.get_cost)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the converted model (through the fast graph when enabled, in a sparse step
        when ``sparse``)."""
        runner = self._fast_runner[0] if self._fast_runner is not None else self.seed
        if self._sparse_runner is None or torch.compiler.is_compiling():
            with compiled_activations(self._fast):  # a no-op unless torch.compile traces
                return runner(*args, **kwargs)
        execution = self._sparse_runner[0]
        if execution.runner is not None:  # the graph with the ops of compact execution in place
            runner = execution.runner
        with execution.step(args + tuple(kwargs.values())):
            return runner(*args, **kwargs)

    def get_size(self) -> torch.Tensor:
        """Differentiable model size (0-dim float32)."""
        raise NotImplementedError

    def get_macs(self) -> torch.Tensor:
        """Differentiable MACs (0-dim float32)."""
        raise NotImplementedError

    def get_cost(self, name: str, binarized: bool = False) -> torch.Tensor:
        """The cost ``name`` ('size' / 'params', 'macs', or one given with ``cost=``), a
        differentiable 0-dim tensor. ``binarized``: of the network ``arch_export()`` gives
        (binarized masks, the argmax branch of each supernet; straight-through gradients)."""
        with self.cost_precision():
            return self._evaluate_cost(self._cost_selection.check_name(name), bool(binarized))

    def _evaluate_cost(self, name: str, binarized: bool) -> torch.Tensor:
        raise NotImplementedError

    def cost_precision(self) -> ContextManager:
        """The context costs are computed in: autocast off on the model's device, since costs
        are float32 by contract (under autocast a matrix product of the cost model would run
        in bfloat16 and round a MAC count to about three significant digits)."""
        param = next(self.parameters(), None)
        return autocast_off(param.device if param is not None else torch.device("cpu"))

    def get_regularization_loss(self) -> torch.Tensor:
        """The cost named by ``regularizer`` (``get_size()`` / ``get_macs()`` for the
        built-ins), or with ``targets`` the target loss (README "Costs and budgets"). NaN/Inf
        in an architectural parameter raises FloatingPointError, as for every cost call
        (``checked_cost``)."""
        return self._cost_selection.loss(self.get_cost)

    def update_targets(self) -> None:
        """Grow the strength of every target the exported network still misses; call it once
        per epoch (no host synchronisation). The strengths are in ``state_dict()``."""
        self._cost_selection.update(self.get_cost)

    def targets_met(self) -> Dict[str, bool]:
        """Whether the network ``arch_export()`` gives meets each target (synchronises)."""
        return self._cost_selection.met(self.get_cost)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module.load_state_dict``, but a strict load of another architecture's state
        raises (naming the first mismatching key) before anything is copied."""
        if strict:
            validate_state_dict(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _nas_parameter_list(self) -> List[nn.Parameter]:
        """The architectural parameters, read at call time (replaced parameters count), in no
        particular order; the per-step NaN check reads them without building module names."""
        raise NotImplementedError

    def _nas_parameter_ids(self) -> Set[int]:
        return {id(p) for p in self._nas_parameter_list()}

    def named_nas_parameters(self, prefix: str = "", recurse: bool = False) -> Iterator[Tuple[str, nn.Parameter]]:
        """Every architectural parameter once, named as in ``named_parameters(prefix)``."""
        ids = self._nas_parameter_ids()
        for name, p in self.named_parameters(prefix=prefix):
            if id(p) in ids:
                yield name, p

    def nas_parameters(self, recurse: bool = False) -> Iterator[nn.Parameter]:
        """Architectural parameters (e.g. for their own optimizer)."""
        for _, p in self.named_nas_parameters(recurse=recurse):
            yield p

    def named_net_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[Tuple[str, nn.Parameter]]:
        """Every other parameter of the model (weights, biases, BatchNorm affine)."""
        ids = self._nas_parameter_ids()
        for name, p in self.named_parameters(prefix=prefix, recurse=recurse):
            if id(p) not in ids:
                yield name, p

    def net_parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """Network weights (disjoint from ``nas_parameters``; together they are ``parameters()``)."""
        for _, p in self.named_net_parameters(recurse=recurse):
            yield p

    def checked_cost(self, cost: torch.Tensor, where: str) -> torch.Tensor:
        """``cost``, or ``FloatingPointError`` naming the architectural parameter that holds a
        NaN/Inf (or saying that the cost is not finite although they are).

        The parameters are checked themselves, not only through the cost: in hard mode, before
        the first forward or with binarized masks a diverged parameter leaves the cost finite.
        This runs on every call for CPU models (one small reduction); on an accelerator it
        would synchronise the device every step, so there it runs only with ``plinio.safety``
        debug checks on. Never while ``torch.compile`` traces."""
        if torch.compiler.is_compiling() or (cost.device.type != "cpu" and not debug_checks_enabled()):
            return cost
        check_nas_parameters(self, where)
        if not bool(torch.isfinite(cost).all()):
            hint = "check the layers' weights and shapes"
            narrow = [d for d in {p.dtype for p in self.nas_parameters()}
                      if d.is_floating_point and torch.finfo(d).max < torch.finfo(torch.float32).max]
            if narrow:
                dtype = min(narrow, key=lambda d: torch.finfo(d).max)
                hint = (f"the costs are computed in the architectural parameters' dtype, {dtype}, whose largest "
                        f"value is {torch.finfo(dtype).max:g}: keep them in float32 (after `.half()`: "
                        "`for p in model.nas_parameters(): p.data = p.data.float()`; the layers still compute in "
                        f"{dtype}), or search in float32 under autocast")
            raise FloatingPointError(f"{type(self).__name__}.{where}: the cost is {cost.tolist()} although every "
                                     f"architectural parameter is finite; {hint}")
        return cost

    def arch_summary(self) -> Dict[str, Dict[str, Any]]:
        """One entry per optimized layer / supernet."""
        raise NotImplementedError

    def arch_export(self) -> nn.Module:
        """The found architecture as a plain ``torch.nn`` model."""
        raise NotImplementedError

    def __str__(self) -> str:
        return str(self.arch_summary())
