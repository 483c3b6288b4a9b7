"""MLPerf Tiny networks written as supernets: conversion, forward, export and equivalence."""
import copy
from typing import Dict, Tuple

import pytest
import torch
import torch.nn as nn

from bench.models import workloads
from plinio.methods import PITSuperNet
from plinio.methods.pit_supernet.nn import PITSuperNetCombiner
from sn_helpers import randomize_architecture

MODELS = ("resnet8", "dscnn", "mobilenetv1", "linear_supernet")
_BUILT: Dict[str, Tuple[nn.Module, PITSuperNet]] = {}


def _built(name: str) -> Tuple[nn.Module, PITSuperNet]:
    """(unconverted model, its PITSuperNet), built once per test session."""
    if name not in _BUILT:
        factory, shape = workloads()[name]
        torch.manual_seed(0)
        model = factory()
        _BUILT[name] = (model, PITSuperNet(model, input_shape=shape))
    return _BUILT[name]


def _input(name: str, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(11)
    return torch.randn((batch,) + workloads()[name].input_shape, generator=gen)


@pytest.mark.parametrize("name", MODELS)
def test_finds_every_supernet_and_keeps_output_shape(name):
    model, search = _built(name)
    assert len(search.supernet_names) == model.N_SUPERNETS
    combiners = [m for m in search.seed.modules() if isinstance(m, PITSuperNetCombiner)]
    assert len(combiners) == model.N_SUPERNETS
    x = _input(name)
    with torch.no_grad():
        expected = copy.deepcopy(model).eval()(x).shape
        got = copy.deepcopy(search).eval()(x).shape
    assert got == expected


@pytest.mark.parametrize("name", MODELS)
def test_export_runs_and_keeps_output_shape(name):
    _, search = _built(name)
    exported = search.arch_export()
    assert not any(type(m).__module__.startswith("plinio") for m in exported.modules()
                   if not isinstance(m, torch.fx.GraphModule))
    x = _input(name)
    with torch.no_grad():
        assert exported.eval()(x).shape == copy.deepcopy(search).eval()(x).shape


@pytest.mark.parametrize("name", MODELS)
def test_hard_eval_export_equals_search_model(name):
    _, built = _built(name)
    search = copy.deepcopy(built)
    randomize_architecture(search, seed=sum(map(ord, name)))
    search.eval()
    search.update_softmax_options(hard=True)
    exported = search.arch_export(add_bn=False).eval()
    x = _input(name)
    with torch.no_grad():
        reference = search(x)
        out = exported(x)
    tolerance = 1e-4 * float(reference.abs().max())
    assert float((out - reference).abs().max()) <= tolerance
    # export chose argmax α in every supernet and changed nothing in the search model
    best = search.best_branches()
    assert all(0 <= best[n] < c.n_branches
               for n, c in zip(search.supernet_names, search._combiners))
    again = search.arch_export(add_bn=False).eval()
    with torch.no_grad():
        assert torch.equal(again(x), out)


def test_export_keeps_only_the_chosen_branches():
    _, built = _built("resnet8")
    search = copy.deepcopy(built)
    with torch.no_grad():
        for combiner in search._combiners:
            combiner.alpha.zero_()
            combiner.alpha[1] = 1.0  # conv5x5 everywhere
    exported = search.arch_export()
    names = {n for n, _ in exported.named_modules()}
    assert "stem.sn_input_layers.1.0" in names
    assert not any(".sn_input_layers.0" in n or ".sn_input_layers.2" in n for n in names)
    assert not any("sn_combiner" in n for n in names)
    assert "stem.sn_input_layers.1.0_exported_bn" in names  # folded BN re-inserted


def test_exported_model_runs_under_torch_export():
    _, built = _built("linear_supernet")
    search = copy.deepcopy(built)
    randomize_architecture(search, seed=5)
    exported = search.arch_export().eval()
    x = _input("linear_supernet")
    with torch.no_grad():
        expected = exported(x)
        program = torch.export.export(exported, (x,))
        assert torch.allclose(program.module()(x), expected)
