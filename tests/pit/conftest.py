"""Fixtures of the PIT tests: every fixture model with its PIT wrapper and an input batch."""
from typing import Callable, Dict, Tuple

import pytest
import torch
import torch.nn as nn

from plinio.methods import PIT
from tests.models import (DSCNN, BNAfterAddModel, ConcatModel, MultiInputModel, ToyModel, tcn_irregular,
                          tcn_regular)

# The fixture models are tiny: one intra-op thread is fastest and fair on a shared machine.
torch.set_num_threads(1)

BUILDERS: Dict[str, Callable[[], nn.Module]] = {
    "toy": ToyModel, "tcn": tcn_regular, "tcn_irregular": tcn_irregular, "dscnn": DSCNN,
    "concat": ConcatModel, "bn_after_add": BNAfterAddModel, "multi_input": MultiInputModel,
}


def randomize_bn(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so BN folding is really tested."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def build(name: str, batch: int = 3, **pit_kwargs) -> Tuple[nn.Module, PIT, Tuple[torch.Tensor, ...]]:
    """(original model, PIT wrapper, inputs of ``batch`` samples) for a fixture model."""
    torch.manual_seed(0)
    model = BUILDERS[name]()
    randomize_bn(model)
    if isinstance(model, MultiInputModel):
        pit = PIT(model, input_example=model.example(1), **pit_kwargs)
        inputs = model.example(batch)
    else:
        pit = PIT(model, input_shape=model.input_shape, **pit_kwargs)
        inputs = (torch.randn((batch,) + tuple(model.input_shape)),)
    return model, pit, inputs


def randomize_masks(pit: PIT, seed: int = 0) -> None:
    """Random values in [0, 1) for every architectural parameter (about half pruned)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in pit.named_nas_parameters():
            p.copy_(torch.rand(p.shape, generator=gen))


@pytest.fixture(params=sorted(BUILDERS))
def model_name(request) -> str:
    return request.param
