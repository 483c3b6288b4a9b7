"""``plinio.graph.zero_gradients``: the gradient-killer tables against PyTorch's own backward
at ±0, and the two graph facts (output gradient zero on pruned channels, gradient dying on
dead channels) on small converted models."""
from typing import Callable, List, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plinio.graph.zero_gradients import (KILLER_FUNCTIONS, KILLER_METHODS, KILLER_MODULES,
                                         gradient_facts)
from plinio.methods.pit.conversion import convert


def _gradient_at_zero(fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The gradient ``fn`` sends to inputs that are exactly +0 and −0, under a random
    upstream gradient, next to non-zero inputs (float64)."""
    x = torch.tensor([0.0, -0.0, 0.0, -0.0, 0.7, -0.7, 3.0, -3.0], dtype=torch.float64)
    x = x.clone().requires_grad_(True)
    upstream = torch.linspace(0.5, 2.0, x.numel(), dtype=torch.float64)
    (fn(x.clone()) * upstream).sum().backward()
    return x.grad[:4]


MODULE_CASES: List[nn.Module] = [
    nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6(), nn.Hardtanh(0.0, 1.0), nn.Hardtanh(-1.0, 0.0),
    nn.Hardtanh(-1.0, 1.0), nn.Threshold(0.0, 0.0), nn.Threshold(0.5, 0.0), nn.Threshold(-0.5, 0.0),
    nn.Hardshrink(), nn.Hardshrink(0.0), nn.Softshrink(), nn.Softshrink(0.0),
]


@pytest.mark.parametrize("module", MODULE_CASES, ids=repr)
def test_module_killers_match_pytorch_backward_at_zero(module: nn.Module) -> None:
    claimed = KILLER_MODULES[type(module)](module)
    grad = _gradient_at_zero(module)
    if claimed:
        assert torch.equal(grad, torch.zeros_like(grad)), grad
    else:
        assert bool((grad != 0).all()), grad


FUNCTION_CASES: List[Tuple[Callable, tuple, dict]] = [
    (torch.relu, (), {}), (torch.relu_, (), {}), (F.relu, (), {}), (F.relu, (), {"inplace": True}),
    (F.relu6, (), {}), (F.hardtanh, (), {}), (F.hardtanh, (0.0, 2.0), {}),
    (F.hardtanh, (), {"min_val": -2.0, "max_val": 0.0}), (F.threshold, (0.0, 0.0), {}),
    (F.threshold, (-0.1, 0.0), {}), (F.hardshrink, (), {}), (F.softshrink, (), {"lambd": 0.0}),
]


class _FakeNode:
    """The part of an fx.Node the function predicates read."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args = (None,) + args
        self.kwargs = kwargs


@pytest.mark.parametrize("fn,args,kwargs", FUNCTION_CASES,
                         ids=[f"{f.__name__}{a}{k}" for f, a, k in FUNCTION_CASES])
def test_function_killers_match_pytorch_backward_at_zero(fn: Callable, args: tuple, kwargs: dict) -> None:
    claimed = KILLER_FUNCTIONS[fn](_FakeNode(args, kwargs))
    grad = _gradient_at_zero(lambda x: fn(x, *args, **kwargs))
    if claimed:
        assert torch.equal(grad, torch.zeros_like(grad)), grad
    else:
        assert bool((grad != 0).all()), grad


@pytest.mark.parametrize("method", sorted(KILLER_METHODS))
def test_method_killers_match_pytorch_backward_at_zero(method: str) -> None:
    assert KILLER_METHODS[method](None)
    grad = _gradient_at_zero(lambda x: getattr(x, method)())
    assert torch.equal(grad, torch.zeros_like(grad)), grad


NON_KILLERS = [nn.LeakyReLU(), nn.GELU(), nn.SiLU(), nn.ELU(), nn.Hardswish(), nn.Mish(), nn.Tanh(),
               nn.CELU(), nn.SELU(), nn.Softsign()]


@pytest.mark.parametrize("module", NON_KILLERS, ids=repr)
def test_activations_that_pass_gradient_at_zero_are_not_killers(module: nn.Module) -> None:
    assert type(module) not in KILLER_MODULES
    assert bool((_gradient_at_zero(module) != 0).all())


def test_clamp_min_zero_passes_gradient_at_zero_and_is_not_a_killer() -> None:
    assert torch.clamp not in KILLER_FUNCTIONS and "clamp" not in KILLER_METHODS
    assert bool((_gradient_at_zero(lambda x: torch.clamp(x, min=0.0)) != 0).all())


# ------------------------------------------------------------------ graph facts
class _Chain(nn.Module):
    """conv_a → act → conv_b (→ act2) → flatten → linear."""

    def __init__(self, act: nn.Module, act2: nn.Module) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = act
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = act2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act2(self.conv_b(self.act(self.conv_a(x))))), 1))


class _Residual(nn.Module):
    """relu(conv_b(relu(conv_a(x))) + x1) with x1 = relu(stem(x)); optional BN on the sum."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = torch.relu(self.stem(x))
        y = self.bn(self.conv_b(F.relu(self.conv_a(x1))) + x1)
        return self.head(y.relu())


def _facts(model: nn.Module):
    conversion = convert(model, (3, 8, 8))
    masked = [n for n, info in conversion.analysis.layers.items() if info.role in ("depthwise", "follower")]
    facts = gradient_facts(conversion.gm, conversion.analysis, masked)
    nodes = {n.target: n for n in conversion.gm.graph.nodes if n.op == "call_module"}
    return facts, nodes


def _zero(facts, node) -> bool:
    return node.name in facts.output_gradient_zero


def _input_dies(facts, node) -> bool:
    return node.args[0].name in facts.gradient_dies


def test_relu_between_layers_zeroes_the_output_gradient_and_kills_the_input_gradient() -> None:
    facts, nodes = _facts(_Chain(nn.ReLU(), nn.ReLU()))
    assert _zero(facts, nodes["conv_a"]) and _zero(facts, nodes["conv_b"])
    assert _input_dies(facts, nodes["conv_b"])
    assert not _input_dies(facts, nodes["conv_a"])  # the network input
    assert _input_dies(facts, nodes["fc"])          # through flatten(pool(relu))


@pytest.mark.parametrize("act", [nn.LeakyReLU(), nn.GELU(), nn.Identity(), nn.Hardtanh()], ids=repr)
def test_an_activation_that_passes_gradient_at_zero_proves_nothing(act: nn.Module) -> None:
    facts, nodes = _facts(_Chain(act, nn.ReLU()))
    assert not _zero(facts, nodes["conv_a"])
    assert not _input_dies(facts, nodes["conv_b"])
    assert _zero(facts, nodes["conv_b"])


def test_residual_add_of_one_group_then_relu() -> None:
    facts, nodes = _facts(_Residual(bn=False))
    assert _zero(facts, nodes["conv_b"]) and _zero(facts, nodes["stem"]) and _zero(facts, nodes["conv_a"])
    assert _input_dies(facts, nodes["conv_a"]) and _input_dies(facts, nodes["conv_b"])
    assert _input_dies(facts, nodes["head"])  # relu(add(...)): the killer is right before it


def test_a_batchnorm_following_the_mask_kills_forward_but_not_backward() -> None:
    facts, nodes = _facts(_Residual(bn=True))
    # the BN (not foldable: after an add) is masked by the group: its input gradient is 0 there
    assert _zero(facts, nodes["conv_b"])
    # the head's input is relu(bn(...)): a killer right before it, the BN behind does not matter
    assert _input_dies(facts, nodes["head"])


def test_the_network_output_and_layers_stop_the_proof() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 4, 3, padding=1)
            self.c = nn.Conv2d(4, 4, 1)
            self.d = nn.Conv2d(8, 4, 1)
            self.e = nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.a(x))
            return self.c(self.b(y)) + self.d(F.leaky_relu(self.e(y)))

    facts, nodes = _facts(Net())
    assert _zero(facts, nodes["a"])
    assert not _zero(facts, nodes["b"])       # b feeds c directly
    assert not _zero(facts, nodes["e"])       # leaky_relu, then a layer
    assert _input_dies(facts, nodes["b"]) and _input_dies(facts, nodes["e"])
    assert not _input_dies(facts, nodes["c"])
    assert not _input_dies(facts, nodes["d"])  # through leaky_relu back to a layer
    assert not _zero(facts, nodes["c"]) and not _zero(facts, nodes["d"])  # the output is frozen


def test_the_facts_carry_through_a_flatten_of_several_features_per_channel() -> None:
    """flatten(pool2x2(relu(conv))): each channel becomes 4 features, the dead features are the
    flattened dead channels, so the linear layer's input gradient there dies at the ReLU."""

    class Net(nn.Module):
        def __init__(self, act: nn.Module) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.act = act
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.fc = nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))

    facts, nodes = _facts(Net(nn.ReLU()))
    assert type(facts.descs[nodes["fc"].args[0].name]).__name__ == "Flatten"
    assert _input_dies(facts, nodes["fc"]) and _zero(facts, nodes["conv"])
    facts, nodes = _facts(Net(nn.GELU()))
    assert not _input_dies(facts, nodes["fc"])
