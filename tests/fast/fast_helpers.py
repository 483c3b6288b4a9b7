"""Shared helpers of the fast-path tests: supernet builders and fast-vs-reference comparison."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from plinio.fast import optimize_supernets
from plinio.graph.tracing import trace
from plinio.methods.pit_supernet import PITSuperNetModule

CONV = {1: nn.Conv1d, 2: nn.Conv2d}
# bench workloads run on smaller inputs than the ones they were converted with (any size
# works for equivalence and compile checks; the tests stay quick)
RUNTIME_INPUT = {"mobilenetv1": (3, 48, 48), "resnet8": (3, 16, 16), "seed": (32, 16, 16),
                 "linear_supernet": (3, 16, 16)}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def conv(ndim: int, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1,
         groups: int = 1, bias: bool = True, padding: Optional[object] = None) -> nn.Module:
    """A conv whose output size is ⌊(L−1)/stride⌋+1 (centred zero padding) by default."""
    if padding is None:
        padding = dilation * (k - 1) // 2
    return CONV[ndim](cin, cout, k, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, bias=bias)


def branch(kind: str, ndim: int, channels: int, stride: int = 1, k: int = 3,
           dilation: int = 1, bias: bool = True) -> nn.Module:
    """One supernet branch of the named kind (all keep channels and the stride's size)."""
    c = channels
    if kind == "conv":
        return conv(ndim, c, c, k, stride, dilation, bias=bias)
    if kind == "depthwise":
        return conv(ndim, c, c, k, stride, dilation, groups=c, bias=bias)
    if kind == "conv_pointwise":  # conv → 1×1: exactly one conv
        return nn.Sequential(conv(ndim, c, c, k, stride, dilation, bias=bias),
                             conv(ndim, c, c, 1, bias=bias))
    if kind == "depthwise_pointwise":  # depthwise → 1×1 without nonlinearity: one dense conv
        return nn.Sequential(conv(ndim, c, c, k, stride, dilation, groups=c, bias=bias),
                             conv(ndim, c, c, 1, bias=bias))
    if kind == "pointwise_conv":  # bias-free 1×1 → conv: exactly one conv
        return nn.Sequential(conv(ndim, c, c, 1, bias=False),
                             conv(ndim, c, c, k, stride, dilation, bias=bias))
    if kind == "padded_chain":  # two padded k×k convs (k ≥ 3): must NOT merge
        return nn.Sequential(conv(ndim, c, c, max(k, 3), stride, dilation, bias=bias),
                             conv(ndim, c, c, 3, bias=bias))
    if kind == "identity":
        return nn.Identity()
    if kind == "nonlinear":
        return nn.Sequential(conv(ndim, c, c, k, stride, dilation, bias=bias), nn.ReLU())
    if kind == "conv_bn":  # BatchNorm in training mode: not linear in x
        return nn.Sequential(conv(ndim, c, c, k, stride, dilation, bias=bias), BN[ndim](c))
    raise ValueError(kind)


class OneSuperNet(nn.Module):
    """stem conv → supernet → ReLU → 1×1 conv: the supernet input requires grad."""

    def __init__(self, branches: Sequence[nn.Module], ndim: int, cin: int, channels: int,
                 gumbel: bool = False) -> None:
        super().__init__()
        self.stem = conv(ndim, cin, channels, 3)
        self.sn = PITSuperNetModule(list(branches), gumbel_softmax=gumbel)
        self.head = conv(ndim, channels, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.sn(self.stem(x))))


def randomize(model: nn.Module, seed: int = 0) -> None:
    """Random weights, α and BN statistics (so that no branch dominates by construction)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64).to(b.dtype) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64).to(b.dtype))


def grads_of(model: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             seed: int) -> Tuple[torch.Tensor, Dict[str, Optional[torch.Tensor]], torch.Tensor]:
    """Output, gradients of every parameter (None when not reached) and of the input, for the
    loss Σ out² (random-sign weighted), with the RNG seeded (Gumbel noise)."""
    for p in model.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = fn(x)
    weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * out * weights).sum().backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone()
             for n, p in model.named_parameters()}
    return out.detach(), grads, x.grad.detach()


def assert_same(ref: Tuple, fast: Tuple, rtol: float, atol: float) -> None:
    """Fast and reference results agree: output, input grad, every parameter grad (None on
    one side only when the other side's gradient is exactly zero)."""
    out_r, g_r, gx_r = ref
    out_f, g_f, gx_f = fast
    torch.testing.assert_close(out_f, out_r, rtol=rtol, atol=atol)
    torch.testing.assert_close(gx_f, gx_r, rtol=rtol, atol=atol)
    assert g_r.keys() == g_f.keys()
    for name in g_r:
        a, b = g_r[name], g_f[name]
        assert (a is None) == (b is None), f"gradient of {name}: reference {a}, fast {b}"
        if a is not None:
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=f"gradient of {name}")


def traced_pair(model: nn.Module) -> Tuple[fx.GraphModule, fx.GraphModule]:
    """(reference GraphModule, fast GraphModule) sharing the same layers."""
    gm = trace(model)
    return gm, optimize_supernets(gm)


def set_mode(model: nn.Module, hard: bool, temperature: float = 1.0) -> None:
    for m in model.modules():
        if isinstance(m, PITSuperNetModule):
            m.update_softmax_options(temperature=temperature, hard=hard)


def merge_plans(fast_gm: fx.GraphModule) -> Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """name → (merged branch indices, separate branch indices)."""
    return {k: (p.merged, p.separate) for k, p in fast_gm.plinio_merge_plans.items()}


def branch_kinds() -> List[str]:
    return ["conv", "depthwise", "conv_pointwise", "depthwise_pointwise", "pointwise_conv",
            "padded_chain", "identity", "nonlinear", "conv_bn"]
