"""The PIT-SuperNet wrapper (docs/behaviour.md §2.2): branch selection plus PIT inside and outside branches."""
import copy
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.cost.specs import CostArg
from plinio.graph.export import check_plain
from plinio.graph.tracing import make_example, model_device_dtype, run_with_batch_hint
from plinio.methods.dnas_base import DNAS
from plinio.methods.dnas_base.cost_selection import builtin_metric, evaluated
from plinio.methods.dnas_base.switches import checked_switch
from plinio.methods.pit.conversion import convert
from plinio.methods.pit.export import export_graph
from plinio.methods.pit.nn.masker_base import masker_parameters
from plinio.methods.pit.nn.module import PITModule
from plinio.methods.pit.network_costs import NetworkCosts
from plinio.safety import check_nas_parameters

from .costs import BranchStaticCosts, SuperNetCosts, branch_prefix
from .conversion import combiner_nodes, find_supernets, probe_supernets, reset_combiners
from .export import keep_best_branches
from .nn.combiner import PITSuperNetCombiner


def _combiner_name(supernet_name: str) -> str:
    return f"{supernet_name}.sn_combiner" if supernet_name else "sn_combiner"


class PITSuperNet(DNAS):
    """Searches which branch of every ``PITSuperNetModule`` to keep and, with
    ``autoconvert_layers=True``, prunes channels / receptive field / dilation of every
    PIT-able layer inside and outside the branches. ``model`` is deep-copied, never modified.

    ``cost``, ``targets`` and ``regularizer=None`` (the default: 'size', or the one cost given
    with ``cost=``): README "Costs and budgets". ``fast`` / ``sparse``: README "Performance"
    and "Sparse execution".
    """

    def __init__(self, model: nn.Module, input_shape: Optional[Sequence[int]] = None,
                 regularizer: Optional[str] = None, autoconvert_layers: bool = True,
                 exclude_names: Iterable[str] = (), exclude_types: Iterable[type] = (), *,
                 input_example: Any = None, fast: bool = True, sparse: bool = True, cost: Optional[CostArg] = None,
                 targets: Optional[Dict[str, float]] = None) -> None:
        super().__init__(regularizer, cost, targets)
        if not isinstance(model, nn.Module):
            raise TypeError(f"PITSuperNet: model must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
        input_shape = self._input_shape_or_none(input_shape, input_example)
        user_supernets = find_supernets(model)
        if not user_supernets:
            warnings.warn(f"PITSuperNet: {type(model).__name__} contains no PITSuperNetModule; "
                          "only the PIT layers are searched (use PIT for plain models)",
                          UserWarning, stacklevel=2)
        self._branch_types: Dict[str, Tuple[str, ...]] = {
            name: tuple(type(b).__name__ for b in sn.sn_input_layers)
            for name, sn in user_supernets.items()}
        device, dtype = model_device_dtype(model)
        example = make_example(input_shape, input_example, device, dtype)
        static = run_with_batch_hint(lambda inputs: self._measure_static_costs(model, inputs), example,
                                     input_shape if input_example is None else None)
        conversion = convert(model, None, input_example=example, autoconvert_layers=autoconvert_layers,
                             exclude_names=exclude_names, exclude_types=exclude_types)
        self._adopt(conversion)
        self.supernet_names: Tuple[str, ...] = tuple(user_supernets)
        combiner_names = [_combiner_name(n) for n in self.supernet_names]
        combiner_nodes(self.seed, combiner_names)  # each supernet is called exactly once
        self._combiners: Tuple[PITSuperNetCombiner, ...] = tuple(
            self.seed.get_submodule(n) for n in combiner_names)
        reset_combiners(self._combiners)
        self._network_costs = NetworkCosts(conversion.gm, conversion.analysis, conversion.layers,
                                           self._cost_model, self._cost_selection.network_specs)
        merge_order = [combiner_names.index(t) for t in self._network_costs.merge_targets]
        self._sn_costs = SuperNetCosts(self.supernet_names, self._combiners, static,
                                       self._cost_model.layer_names,
                                       self._cost_model.layer_costs, self._network_costs, merge_order)
        self.sparse = sparse
        self.fast = fast
        self._cost_selection.bind(self.get_cost)

    @staticmethod
    def _measure_static_costs(model: nn.Module, example: Tuple[torch.Tensor, ...]
                              ) -> Dict[str, BranchStaticCosts]:
        """Branch shape check and static costs on a private copy (docs/behaviour.md §4.2)."""
        probe = copy.deepcopy(model)
        return probe_supernets(probe, find_supernets(probe), lambda: probe(*example))

    # ---- switches ----------------------------------------------------------------------------
    def _switch_fast_layers(self, fast: bool) -> None:
        for combiner in self._combiners:
            combiner.use_fused_ops = fast

    # ---- softmax options ---------------------------------------------------------------------
    def update_softmax_options(self, temperature: Optional[float] = None,
                               hard: Optional[bool] = None) -> None:
        """Set the softmax temperature and/or the hard-selection flag of every supernet."""
        if hard is not None:
            hard = checked_switch("PITSuperNet.update_softmax_options", "hard", hard)
        if temperature is not None:
            value = float(temperature)
            if not value > 0.0 or value == float("inf"):
                raise ValueError(f"PITSuperNet: softmax temperature must be a finite positive "
                                 f"number, got {temperature!r}")
        for combiner in self._combiners:
            combiner.update_softmax_options(temperature=temperature, hard=hard)

    def update_softmax_temperature(self, value: float) -> None:
        """Deprecated single-value form of ``update_softmax_options(temperature=value)``."""
        warnings.warn("PITSuperNet.update_softmax_temperature is deprecated; use "
                      "update_softmax_options(temperature=...)", DeprecationWarning,
                      stacklevel=2)
        self.update_softmax_options(temperature=value)

    @property
    def train_selection(self) -> bool:
        """Whether the branch choice α of the supernets is trained."""
        return all(c.train_selection for c in self._combiners)

    @train_selection.setter
    def train_selection(self, value: bool) -> None:
        value = checked_switch("PITSuperNet", "train_selection", value)
        for combiner in self._combiners:
            combiner.train_selection = value

    # ---- costs -------------------------------------------------------------------------------
    def thetas(self) -> torch.Tensor:
        """Current θ of every supernet, concatenated in the order of ``supernet_names``."""
        return self._sn_costs.theta_all()

    def get_size(self) -> torch.Tensor:
        """Σ θ-weighted branch sizes + PIT layers outside supernets (docs/behaviour.md §4.3)."""
        with self.cost_precision():
            return self.checked_cost(self._sn_costs.cost("size", fast=self._fast), "get_size")

    def get_macs(self) -> torch.Tensor:
        """Σ θ-weighted branch MACs + PIT layers outside supernets (docs/behaviour.md §4.3)."""
        with self.cost_precision():
            return self.checked_cost(self._sn_costs.cost("macs", fast=self._fast), "get_macs")

    def _evaluate_cost(self, name: str, binarized: bool) -> torch.Tensor:
        metric = builtin_metric(self._cost_selection.specs[name]) or name
        return evaluated(self, f"get_cost('{name}')", lambda: self._sn_costs.cost(metric, self._fast, binarized))

    def get_total_icv(self, eps: float = 1e-3) -> torch.Tensor:
        """Σ over supernets of mean(θ)² / (var(θ) + eps) with the unbiased variance (docs/behaviour.md §3.3)."""
        with self.cost_precision():
            return self.checked_cost(self._sn_costs.total_icv(eps, fast=self._fast), "get_total_icv")

    def _nas_parameter_list(self) -> List[nn.Parameter]:
        return masker_parameters(self._maskers) + [c.alpha for c in self._combiners]

    # ---- results -----------------------------------------------------------------------------
    def _owner_supernet(self, target: str) -> Optional[str]:
        """The supernet whose branches or combiner hold the submodule ``target``, if any."""
        for sn_name in self.supernet_names:
            layers_prefix = branch_prefix(sn_name, 0).rsplit(".", 1)[0]  # "<sn>.sn_input_layers"
            if target.startswith(layers_prefix + ".") or target == _combiner_name(sn_name):
                return sn_name
        return None

    def _supernet_summary(self, sn_name: str, combiner: PITSuperNetCombiner,
                          layers: Dict[str, PITModule]) -> Dict[str, Any]:
        theta = combiner.theta_alpha.detach()
        branches: Dict[str, Any] = {}
        for i in range(combiner.n_branches):
            prefix = branch_prefix(sn_name, i)
            entry: Dict[str, Any] = {"type": self._branch_types[sn_name][i],
                                     "alpha": float(theta[i])}
            for name, layer in layers.items():
                if name == prefix or name.startswith(prefix + "."):
                    entry[name] = layer.summary()
            branches[f"branch_{i}"] = entry
        return {"supernet_branches": branches, "type": "PITSuperNetModule"}

    def arch_summary(self) -> Dict[str, Dict[str, Any]]:
        """One entry per supernet (its branches with θ and PIT layer summaries) and per PIT
        layer outside supernets, in graph order."""
        layers = dict(self._pit_layers)
        combiners = dict(zip(self.supernet_names, self._combiners))
        summary: Dict[str, Dict[str, Any]] = {}
        for node in self.seed.graph.nodes:
            if node.op != "call_module":
                continue
            owner = self._owner_supernet(node.target)
            if owner is not None:
                if owner not in summary:
                    summary[owner] = self._supernet_summary(owner, combiners[owner], layers)
            elif node.target in layers and node.target not in summary:
                summary[node.target] = layers[node.target].summary()
        return summary

    def best_branches(self) -> Dict[str, int]:
        """Supernet qualified name → index of the branch export keeps (argmax α)."""
        return {n: c.best_layer_index() for n, c in zip(self.supernet_names, self._combiners)}

    def arch_export(self, add_bn: bool = True) -> nn.Module:
        """Plain ``torch.nn`` GraphModule: each supernet replaced by its best branch, every PIT
        layer by its pruned plain layer (docs/behaviour.md §6). The search model is not changed."""
        check_nas_parameters(self, "arch_export")
        best = {_combiner_name(n): i for n, i in self.best_branches().items()}
        # a new graph sharing the layers of self.seed; export_graph copies what it keeps
        selected = fx.GraphModule(self.seed, copy.deepcopy(self.seed.graph),
                                  type(self.seed).__name__)
        keep_best_branches(selected, best)
        return check_plain(export_graph(selected, add_bn=add_bn))
