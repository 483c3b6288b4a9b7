"""A search wrapper copied with ``copy.deepcopy`` (best-model snapshots, EMA) or pickled whole
(``torch.save(model)``) is a working, independent search: the same outputs, costs and
gradients as the original, and training the copy leaves the original alone."""
import copy
import io
import warnings

import pytest
import torch

from bench.models import workloads
from plinio.methods import PIT, PITSuperNet


def _deepcopy(search: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(search)


def _pickled(search: torch.nn.Module) -> torch.nn.Module:
    buffer = io.BytesIO()
    torch.save(search, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _step(search: torch.nn.Module, x: torch.Tensor):
    search.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = search(x)
    cost = search.get_regularization_loss()
    (out.square().mean() + 1e-6 * cost).backward()
    return out.detach(), cost.detach(), {n: p.grad.clone() for n, p in search.named_parameters()
                                         if p.grad is not None}


@pytest.mark.parametrize("name", ["tcn", "resnet8"])
@pytest.mark.parametrize("regularizer", ["size", "macs"])
@pytest.mark.parametrize("duplicate", [_deepcopy, _pickled], ids=["deepcopy", "pickle"])
def test_a_copied_search_is_the_same_search_and_independent(name: str, regularizer: str, duplicate) -> None:
    workload = workloads()[name]
    wrapper = PIT if name == "tcn" else PITSuperNet
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = wrapper(workload.factory(), input_shape=workload.input_shape, regularizer=regularizer)
    x = torch.randn((2,) + tuple(workload.input_shape), generator=torch.Generator().manual_seed(2))
    want = _step(search, x)
    copied = duplicate(search)
    got = _step(copied, x)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert got[2].keys() == want[2].keys()
    for key, grad in want[2].items():
        torch.testing.assert_close(got[2][key], grad, msg=lambda m, key=key: f"{key}: {m}")
    with torch.no_grad():
        for param in copied.nas_parameters():
            param.mul_(0.1)
    torch.testing.assert_close(_step(search, x)[0], want[0])
