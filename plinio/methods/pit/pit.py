"""The PIT wrapper (docs/behaviour.md §2.1)."""
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

from plinio.cost.specs import CostArg
from plinio.methods.dnas_base import DNAS
from plinio.methods.dnas_base.switches import checked_switch
from plinio.methods.dnas_base.cost_selection import builtin_metric, evaluated
from plinio.methods.pit.conversion import convert
from plinio.methods.pit.export import export_graph
from plinio.methods.pit.nn.conv1d import PITConv1d
from plinio.methods.pit.nn.masker_base import masker_parameters
from plinio.methods.pit.nn.module import PITWeightedModule
from plinio.methods.pit.network_costs import NetworkCosts
from plinio.safety import check_nas_parameters


class PIT(DNAS):
    """Pruning In Time: searches channels, receptive field and dilation of every convertible
    layer of ``model`` (which is deep-copied, never modified).

    ``cost``, ``targets`` and ``regularizer=None`` (the default: 'size', or the one cost given
    with ``cost=``): README "Costs and budgets". ``fast`` / ``sparse``: README "Performance"
    and "Sparse execution".
    """

    def __init__(self, model: nn.Module, input_shape: Optional[Sequence[int]] = None,
                 regularizer: Optional[str] = None, autoconvert_layers: bool = True,
                 exclude_names: Iterable[str] = (), exclude_types: Iterable[type] = (),
                 train_features: bool = True, train_rf: bool = True, train_dilation: bool = True, *,
                 input_example: Any = None, fast: bool = True, sparse: bool = True, cost: Optional[CostArg] = None,
                 targets: Optional[Dict[str, float]] = None) -> None:
        super().__init__(regularizer, cost, targets)
        input_shape = self._input_shape_or_none(input_shape, input_example)
        conversion = convert(model, input_shape, input_example=input_example,
                             autoconvert_layers=autoconvert_layers, exclude_names=exclude_names,
                             exclude_types=exclude_types)
        self._adopt(conversion)
        self._network_costs = NetworkCosts(conversion.gm, conversion.analysis, conversion.layers,
                                           self._cost_model, self._cost_selection.network_specs)
        if self._network_costs.peak_names and self._network_costs.merge_targets:
            raise ValueError(f"PIT: peak memory of a model with supernets ({list(self._network_costs.merge_targets)}) "
                             f"depends on their branch choice; search it with PITSuperNet")
        self.sparse = sparse
        self.fast = fast
        self.train_features = train_features
        self.train_rf = train_rf
        self.train_dilation = train_dilation
        self._cost_selection.bind(self.get_cost)

    # ---- switches ----------------------------------------------------------------------------
    def _layers_of(self, cls: type) -> Iterable[Any]:
        return (layer for _, layer in self._pit_layers if isinstance(layer, cls))

    def _switch_state(self, default: bool, cls: type, attr: str) -> bool:
        """True when every searchable masker of that kind is trained (read from the maskers, so
        a loaded state_dict is reflected); ``default`` when the model has none."""
        maskers = [getattr(layer, attr) for layer in self._layers_of(cls) if not getattr(layer, attr).frozen]
        return all(m.trainable for m in maskers) if maskers else default

    @property
    def train_features(self) -> bool:
        """Whether channel masks are trained (setting it applies to every layer)."""
        return self._switch_state(self._train_features, PITWeightedModule, "out_features_masker")

    @train_features.setter
    def train_features(self, value: bool) -> None:
        self._train_features = checked_switch("PIT", "train_features", value)
        for layer in self._layers_of(PITWeightedModule):
            layer.train_features = value

    @property
    def train_rf(self) -> bool:
        """Whether receptive-field masks are trained (setting it applies to every Conv1d)."""
        return self._switch_state(self._train_rf, PITConv1d, "timestep_masker")

    @train_rf.setter
    def train_rf(self, value: bool) -> None:
        self._train_rf = checked_switch("PIT", "train_rf", value)
        for layer in self._layers_of(PITConv1d):
            layer.train_rf = value

    @property
    def train_dilation(self) -> bool:
        """Whether dilation masks are trained (setting it applies to every Conv1d)."""
        return self._switch_state(self._train_dilation, PITConv1d, "dilation_masker")

    @train_dilation.setter
    def train_dilation(self, value: bool) -> None:
        self._train_dilation = checked_switch("PIT", "train_dilation", value)
        for layer in self._layers_of(PITConv1d):
            layer.train_dilation = value

    # ---- costs -------------------------------------------------------------------------------
    def _cost(self, index: int, binarized: bool, where: str) -> torch.Tensor:
        with self.cost_precision():
            costs = self._cost_model.layer_costs(binarized)
        return self.checked_cost(costs[index].sum(), where)

    def get_size(self) -> torch.Tensor:
        """Σ layer sizes with the continuous masks (docs/behaviour.md §4.1)."""
        return self._cost(0, False, "get_size")

    def get_macs(self) -> torch.Tensor:
        """Σ layer MACs with the continuous masks, every call counted (docs/behaviour.md §4.1)."""
        return self._cost(1, False, "get_macs")

    def get_size_binarized(self) -> torch.Tensor:
        """Σ layer sizes with the binarized masks (straight-through gradient)."""
        return self._cost(0, True, "get_size_binarized")

    def get_macs_binarized(self) -> torch.Tensor:
        """Σ layer MACs with the binarized masks (straight-through gradient)."""
        return self._cost(1, True, "get_macs_binarized")

    def _evaluate_cost(self, name: str, binarized: bool) -> torch.Tensor:
        metric = builtin_metric(self._cost_selection.specs[name])
        if metric is not None:
            return self._cost(0 if metric == "size" else 1, binarized, f"get_cost('{name}')")
        network = self._network_costs
        if name in network.peak_names:
            return evaluated(self, f"get_cost('{name}')", lambda: network.peak(name, binarized))
        return evaluated(self, f"get_cost('{name}')",
                         lambda: network.per_row(binarized)[name].sum() + network.constant(name))

    def _nas_parameter_list(self) -> List[nn.Parameter]:
        return masker_parameters(self._maskers)

    # ---- results -----------------------------------------------------------------------------
    def arch_summary(self) -> Dict[str, Dict[str, Any]]:
        """{qualified layer name: layer.summary()} for every PIT layer."""
        return {name: layer.summary() for name, layer in self._pit_layers}

    def arch_export(self, add_bn: bool = True) -> nn.Module:
        """Plain ``torch.nn`` GraphModule of the found architecture (docs/behaviour.md §6)."""
        check_nas_parameters(self, "arch_export")
        return export_graph(self.seed, add_bn=add_bn)
