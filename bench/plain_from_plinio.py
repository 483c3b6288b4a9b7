"""Build the plain-PyTorch anchor (``bench/plain_supernet.py``) of a workload so that it is the
same search as plinio's: same weights, same supernets, the same channel masks shared by the
same layers.

Which layers share a channel mask, which mask gives each layer its input width and which
Conv1d search their taps is read from plinio's conversion of the same model (each converted
layer's ``out_features_masker``, input-features calculator and tap maskers); everything the
anchor computes is its own plain PyTorch.
Masks are named as in ``named_nas_parameters()``, so a channel can be pruned in both
searches by name (``bench/channel_pruning.py``).
"""
import copy
from typing import Dict, Mapping, Sequence, Set, Tuple

import torch.nn as nn

from bench.plain_supernet import LayerMasks, MaskSpec, PlainSearch, PlainSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule

CHANNEL_MASK_SUFFIX = ".out_features_masker.alpha"


def channel_mask_specs(wrapper: nn.Module) -> Dict[str, MaskSpec]:
    """Every searched channel mask of a PIT/PITSuperNet wrapper: nas-parameter name → spec."""
    specs = {}
    for name, param in wrapper.named_nas_parameters():
        if name.endswith(CHANNEL_MASK_SUFFIX):
            masker = wrapper.get_submodule(name[:-len(".alpha")])
            specs[name] = MaskSpec(param.numel(), int(masker.keep_alive_channels))
    return specs


def mask_plan(wrapper: nn.Module) -> Tuple[Dict[str, MaskSpec], Dict[str, LayerMasks]]:
    """(masks, layers): the channel masks of the wrapper and, for every converted layer of its
    ``seed`` (by qualified name), the masks it uses. A frozen mask (a layer whose width
    cannot change) counts as a constant width."""
    masks = channel_mask_specs(wrapper)
    name_of = {id(p): name for name, p in wrapper.named_nas_parameters() if name in masks}
    nas_ids = {id(p) for p in wrapper.nas_parameters()}
    layers: Dict[str, LayerMasks] = {}
    for layer_name, layer in wrapper.seed.named_modules():
        masker = getattr(layer, "out_features_masker", None)
        if masker is None:
            continue
        terms, const = layer.input_features_calculator.linear_terms()
        input_terms = []
        for producer, coef in terms:
            key = name_of.get(id(producer.alpha))
            if key is None:
                const += coef * producer.alpha.numel()
            else:
                input_terms.append((key, float(coef)))
        layers[layer_name] = LayerMasks(name_of.get(id(masker.alpha)), tuple(input_terms),
                                        float(const),
                                        _searched(layer, "timestep_masker", "beta", nas_ids),
                                        _searched(layer, "dilation_masker", "gamma", nas_ids))
    return masks, layers


def _searched(layer: nn.Module, masker_name: str, param_name: str, nas_ids: Set[int]) -> bool:
    """Whether a Conv1d's tap masker is searched: trainable, more than one entry."""
    param = getattr(getattr(layer, masker_name, None), param_name, None)
    return param is not None and id(param) in nas_ids and param.numel() > 1


def _plain_supernets(model: nn.Module) -> Dict[str, str]:
    """Replace every PITSuperNetModule of ``model`` (in place) by a PlainSuperNet holding the
    same branch modules; returns {plinio branch prefix: plain branch prefix}."""
    renames = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, PITSuperNetModule):
            plain = PlainSuperNet(list(module.sn_input_layers))
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
            dot = f"{name}." if name else ""
            renames[f"{dot}sn_input_layers."] = f"{dot}branches."
    return renames


def _rename(name: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def plain_search(model: nn.Module, wrapper: nn.Module, input_shape: Sequence[int]) -> PlainSearch:
    """The plain anchor of ``model`` (not modified) with the masks ``wrapper`` (plinio's
    conversion of the same model) uses."""
    masks, layers = mask_plan(wrapper)
    plain = copy.deepcopy(model)
    renames = _plain_supernets(plain)
    return PlainSearch(plain, input_shape, masks,
                       {_rename(name, renames): spec for name, spec in layers.items()})
