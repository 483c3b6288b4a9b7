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
            block = rm.BlockSpec("supernet", out, branches=branches, gumbel=draw(st.booleans()))
        blocks.append(block)
        channels = rm.block_out_channels(block, channels)
    return rm.ModelSpec(dims, in_channels, size, tuple(blocks))


def _convert(spec: rm.ModelSpec, use_supernet_wrapper: bool, seed: int,
             fast: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    model = rm.RandomNet(spec)
    before = snapshot(model)
    wrapper = PITSuperNet if (spec.has_supernet or use_supernet_wrapper) else PIT
    with warnings.catch_warnings():  # PITSuperNet on a plain model says "use PIT"
        warnings.simplefilter("ignore", UserWarning)
        search = wrapper(model, input_shape=spec.input_shape, fast=fast)
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


@SETTINGS
@given(spec=model_specs(), use_sn=st.booleans(), seed=st.integers(0, 2 ** 16),
       training=st.booleans(), hard=st.booleans())
def test_fast_path_equals_reference_path(spec: rm.ModelSpec, use_sn: bool, seed: int,
                                         training: bool, hard: bool) -> None:
    """Same outputs, costs, gradients and updated buffers (BatchNorm statistics, Gumbel
    noise) on the fast and the reference path; their checkpoints are interchangeable."""
    fast = _convert(spec, use_sn, seed, fast=True)
    reference = _convert(spec, use_sn, seed, fast=False)
    randomize_architecture(fast, seed + 1)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn((3,) + spec.input_shape, generator=torch.Generator().manual_seed(seed))
    results = []
    for search in (fast, reference):
        search.train(training)
        if _combiners(search):
            search.update_softmax_options(temperature=0.7, hard=hard)
        torch.manual_seed(seed)  # same Gumbel noise on both paths
        out = search(x)
        cost = search.get_regularization_loss()
        weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
        ((out * weights).sum() + 1e-3 * cost).backward()
        grads = {name: None if p.grad is None else p.grad.clone()
                 for name, p in search.named_parameters()}
        results.append((out.detach(), cost.detach(), grads, search.state_dict()))
    (out_f, cost_f, grads_f, state_f), (out_r, cost_r, grads_r, state_r) = results
    torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cost_f, cost_r, rtol=1e-5, atol=1e-4)
    assert grads_f.keys() == grads_r.keys()
    for name, grad in grads_r.items():
        if grad is None:
            assert grads_f[name] is None or not grads_f[name].any(), name
        else:
            assert grads_f[name] is not None, f"{name} has no gradient on the fast path"
            torch.testing.assert_close(grads_f[name], grad, rtol=1e-3, atol=1e-5,
                                       msg=lambda m, name=name: f"gradient of {name}: {m}")
    for key, value in state_r.items():
        torch.testing.assert_close(state_f[key], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")
