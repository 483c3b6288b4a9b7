"""Shared helpers of the sparse-execution tests: a sparse and a dense search of the same model,
random pruning, forcing every site sparse, one step's results and their comparison."""
import contextlib
import copy
import warnings
from typing import Dict, FrozenSet, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import plinio.fast.sparse_step as sparse_step
from bench.channel_pruning import draw_pruned_channels, prune
from bench.plain_from_plinio import channel_mask_specs
from plinio.methods import PIT, PITSuperNet
from plinio.methods.pit_supernet import PITSuperNetModule

Results = Tuple[torch.Tensor, Dict[str, Optional[torch.Tensor]], torch.Tensor]


def search_pair(model: nn.Module, input_shape: Sequence[int], seed: int = 0) -> Tuple[nn.Module, nn.Module]:
    """(sparse search, dense search) of copies of ``model``, with the same state."""
    has_supernets = any(isinstance(m, PITSuperNetModule) for m in model.modules())
    wrapper = PITSuperNet if has_supernets else PIT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sparse = wrapper(copy.deepcopy(model), input_shape=tuple(input_shape))
        dense = wrapper(copy.deepcopy(model), input_shape=tuple(input_shape), sparse=False)
    dense.load_state_dict(sparse.state_dict())
    return sparse, dense


def prune_randomly(searches: Sequence[nn.Module], fraction: float, seed: int) -> None:
    """The same seeded ``fraction`` of every searched channel mask below the threshold in each."""
    channels = draw_pruned_channels(channel_mask_specs(searches[0]), fraction, seed)
    for search in searches:
        alphas = dict(search.named_nas_parameters())
        prune({name: alphas[name] for name in channels}, channels)


def set_softmax(search: nn.Module, hard: bool, temperature: float = 1.0) -> None:
    if hasattr(search, "update_softmax_options"):
        search.update_softmax_options(temperature=temperature, hard=hard)


def results(search: nn.Module, x: torch.Tensor, seed: int, regularizer: bool = True) -> Results:
    """Output, every parameter's gradient and the input's gradient of one step (random-sign
    weighted Σ out², plus the regularizer), with the RNG seeded (Gumbel noise)."""
    search.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = search(x)
    weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    loss = (out * out * weights).sum()
    if regularizer:
        loss = loss + 1e-6 * search.get_regularization_loss()
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in search.named_parameters()}
    return out.detach(), grads, x.grad.detach()


def assert_same(got: Results, expected: Results, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Output, input gradient and every parameter gradient agree (a gradient is None on both
    sides or on neither)."""
    torch.testing.assert_close(got[0], expected[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(got[2], expected[2], rtol=rtol, atol=atol, msg=lambda m: f"input gradient: {m}")
    assert got[1].keys() == expected[1].keys()
    for name, want in expected[1].items():
        have = got[1][name]
        assert (have is None) == (want is None), f"gradient of {name}: {have} vs {want}"
        if want is not None:
            torch.testing.assert_close(have, want, rtol=rtol, atol=atol * max(1.0, float(want.abs().max())),
                                       msg=lambda m, name=name: f"gradient of {name}: {m}")


class SparseCalls:
    """How many sparse convolutions ran."""

    def __init__(self) -> None:
        self.count = 0


@contextlib.contextmanager
def forced_sparse(monkeypatch, devices: FrozenSet[str] = frozenset({"cpu", "cuda"})) -> Iterator[SparseCalls]:
    """Every site runs sparse whatever the decision rule says (so that exactness is tested on
    small models), on the device types ``devices`` (CUDA too, by default), and the sparse calls
    are counted."""
    calls = SparseCalls()
    original = sparse_step.run_sparse_plan

    def counted(*args, **kwargs):
        calls.count += 1
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(sparse_step, "sparse_pays", lambda *args: True)
        patch.setattr(sparse_step, "SPARSE_DEVICE_TYPES", devices)
        patch.setattr(sparse_step, "run_sparse_plan", counted)
        yield calls

