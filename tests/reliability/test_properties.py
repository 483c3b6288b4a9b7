"""Property tests on random sequential / residual CNNs (1-D and 2-D) with random supernets:
conversion succeeds and leaves the user's model alone, the exported network equals the
search model in hard eval mode, and the costs equal an independent recomputation."""
import warnings
from typing import Dict

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import random_models as rm
from reliability_checks import (assert_export_matches, assert_same_snapshot,
                                randomize_architecture, snapshot)
from plinio.methods import PIT, PITSuperNet
from plinio.methods.pit_supernet.nn import PITSuperNetCombiner

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def model_specs(draw: st.DrawFn) -> rm.ModelSpec:
    dims = draw(st.sampled_from([1, 2]))
    size = draw(st.integers(5, 12)) if dims == 1 else draw(st.integers(3, 6))
    kernels = [1, 2, 3, 4, 5] if dims == 1 else [1, 3]
    in_channels = channels = draw(st.integers(1, 3))
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv", "residual", "supernet"]))
        dilation = draw(st.sampled_from([1, 2])) if dims == 1 else 1
        if kind == "conv":
            block = rm.BlockSpec("conv", draw(st.integers(1, 6)), draw(st.sampled_from(kernels)),
                                 dilation, draw(st.booleans()), draw(st.booleans()),
                                 draw(st.booleans()))
        elif kind == "residual":
            block = rm.BlockSpec("residual", channels, draw(st.sampled_from(kernels)), dilation,
                                 draw(st.booleans()))
        else:
            branches = tuple(draw(st.lists(st.sampled_from(rm.BRANCH_KINDS), min_size=1,
                                           max_size=3)))
            out = channels if "identity" in branches else draw(st.integers(1, 6))
            block = rm.BlockSpec("supernet", out, branches=branches)
        blocks.append(block)
        channels = rm.block_out_channels(block, channels)
    return rm.ModelSpec(dims, in_channels, size, tuple(blocks))


def _convert(spec: rm.ModelSpec, use_supernet_wrapper: bool, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = rm.RandomNet(spec)
    before = snapshot(model)
    wrapper = PITSuperNet if (spec.has_supernet or use_supernet_wrapper) else PIT
    with warnings.catch_warnings():  # PITSuperNet on a plain model says "use PIT"
        warnings.simplefilter("ignore", UserWarning)
        search = wrapper(model, input_shape=spec.input_shape)
    assert_same_snapshot(before, snapshot(model))
    return search


def _combiners(search: nn.Module) -> Dict[str, PITSuperNetCombiner]:
    return {name[: -len(".sn_combiner")]: module for name, module in search.seed.named_modules()
            if isinstance(module, PITSuperNetCombiner)}


@SETTINGS
@given(spec=model_specs(), use_sn=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_exported_equals_search_model_in_hard_eval_mode(spec: rm.ModelSpec, use_sn: bool,
                                                       seed: int) -> None:
    search = _convert(spec, use_sn, seed)
    assert_export_matches(search, spec.input_shape, seed=seed + 1)


@SETTINGS
@given(spec=model_specs(), use_sn=st.booleans(), seed=st.integers(0, 2 ** 16),
       temperature=st.sampled_from([1.0, 0.5, 2.0]))
def test_costs_equal_layer_by_layer_recomputation(spec: rm.ModelSpec, use_sn: bool, seed: int,
                                                  temperature: float) -> None:
    search = _convert(spec, use_sn, seed)
    randomize_architecture(search, seed + 1)
    search.eval()
    combiners = _combiners(search)
    if combiners:
        search.update_softmax_options(temperature=temperature)
    with torch.no_grad():
        search(torch.randn((1,) + spec.input_shape))
    thetas = {name: torch.softmax(c.alpha.detach() / temperature, 0)
              for name, c in combiners.items()}
    size, macs = rm.CostOracle(spec, search.seed).compute(thetas)
    got_size, got_macs = search.get_size(), search.get_macs()
    assert got_size.dtype == torch.float32 and got_size.dim() == 0
    torch.testing.assert_close(got_size.detach(), size.float(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got_macs.detach(), macs.float(), rtol=1e-5, atol=1e-3)
