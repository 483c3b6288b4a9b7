"""Checks shared by the reliability tests: "the user's model is unchanged", "the exported
network computes the search model's function", and "this call fails with a clear message"."""
import re
import warnings
from typing import Callable, Dict, Tuple

import pytest
import torch
from torch import nn

Snapshot = Tuple[str, Dict[str, torch.Tensor], Dict[str, bool], bool]


def snapshot(model: nn.Module) -> Snapshot:
    """Structure (repr and class of every submodule), a copy of every tensor of the state,
    every parameter's requires_grad flag and the training flag."""
    structure = repr(model) + "|" + ";".join(
        f"{name}:{type(module).__module__}.{type(module).__qualname__}"
        for name, module in model.named_modules()
    )
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    return structure, state, grads, model.training


def assert_same_snapshot(before: Snapshot, after: Snapshot) -> None:
    assert after[0] == before[0], "module structure changed"
    assert after[1].keys() == before[1].keys(), "state_dict keys changed"
    for key, value in before[1].items():
        assert after[1][key].dtype == value.dtype, f"dtype of {key} changed"
        assert torch.equal(after[1][key], value), f"state entry {key} changed"
    assert after[2] == before[2], "requires_grad flags changed"
    assert after[3] == before[3], "training flag changed"


def randomize_architecture(search: nn.Module, seed: int = 0) -> None:
    """PIT mask parameters spread around the binarization threshold (some channels / taps
    pruned, some kept) and random branch preferences of the supernets."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in search.named_nas_parameters():
            if name.endswith("sn_combiner.alpha"):
                param.copy_(torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.rand(param.shape, generator=gen) * 1.6 - 0.3)


def assert_export_matches(search: nn.Module, shape: Tuple[int, ...],
                          dtype: torch.dtype = torch.float32, rtol: float = 1e-4,
                          seed: int = 0) -> None:
    """Correct behaviour (docs/behaviour.md §6): with a random architecture, in eval mode with hard
    selection, the exported network computes the search model's function, holds no plinio
    class, and exporting leaves the search model as it was."""
    randomize_architecture(search, seed)
    search.eval()
    if hasattr(search, "update_softmax_options"):
        search.update_softmax_options(hard=True)
    x = torch.randn((2,) + tuple(shape), generator=torch.Generator().manual_seed(seed)).to(dtype)
    with torch.no_grad():
        expected = search(x)
        exported = search.arch_export(add_bn=False)
        exported.eval()
        got = exported(x)
        again = search(x)
    assert not any(type(m).__module__.startswith("plinio") for m in exported.modules())
    assert got.shape == expected.shape and got.dtype == expected.dtype == dtype
    scale = float(expected.abs().max().float())
    assert float((got - expected).abs().max().float()) <= rtol * max(scale, 1e-3)
    assert torch.equal(again, expected), "arch_export changed the search model"


def expect_error(model: nn.Module, build: Callable[[nn.Module], object], exc: type,
                 *patterns: str) -> str:
    """``build(model)`` must raise ``exc`` whose message matches every pattern, and leave
    ``model`` as it was; returns the message."""
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc) as info:
            build(model)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message, re.S), f"{pattern!r} not in: {message}"
    assert_same_snapshot(before, snapshot(model))
    return message
