"""Mixed precision at model level: under ``torch.autocast`` the fast path gives what the
reference path (eager PyTorch under autocast) gives, within the autocast dtype's precision,
for outputs and every gradient, in soft and hard mode, with merged branches, padded convs,
PIT and PITSuperNet (bfloat16 on the CPU here; float16 with a GradScaler and bfloat16 on
CUDA in the tests marked ``gpu``)."""
import contextlib
import warnings
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models import workloads
from bench.search_step import build_wrapper
from plinio.fast import zero_padded_conv
from plinio.methods import PITSuperNet
from plinio.methods.pit.nn import PITConv1d, PITDilationMasker, PITFeaturesMasker, PITTimestepMasker
from plinio.methods.pit_supernet import PITSuperNetModule

WORKLOADS = workloads()
RUNTIME_INPUT = {"resnet8": (3, 16, 16), "seed": (32, 8, 8), "linear_supernet": (3, 12, 12),
                 "mobilenetv1": (3, 48, 48)}
BF16_ULP = 2.0 ** -8
# the fast path's error against the float32 result may be this many times the reference
# path's (or one unit in the last place of the autocast dtype, relative to the tensor's
# largest value): both are rounded computations of the same function, in a different order
# (a merged kernel is summed in float32 and rounded once, the branches are rounded each)
ERROR_FACTOR = 4.0


class IssueCase(nn.Module):
    """A conv, then a supernet of an Identity and a 'same'-padded 5x5 conv (the two merge)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.sn = PITSuperNetModule([nn.Identity(), nn.Conv2d(8, 8, 5, padding="same")])
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.sn(self.conv(x))).mean(dim=(2, 3)))


def _workload(name: str):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "issue":
            wrapper = PITSuperNet(IssueCase(), input_shape=(3, 8, 8))
        else:
            wrapper = build_wrapper(WORKLOADS[name].factory(), WORKLOADS[name].input_shape, fast=True)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in wrapper.named_nas_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 if pname.endswith("sn_combiner.alpha") else 0.6))
    shape = (3, 8, 8) if name == "issue" else RUNTIME_INPUT.get(name, WORKLOADS[name].input_shape)
    return wrapper, torch.randn((2,) + tuple(shape), generator=torch.Generator().manual_seed(7))


def _run(wrapper, x: torch.Tensor, fast: bool, autocast: Optional[torch.dtype],
         scaler: Optional["torch.amp.GradScaler"] = None) -> Tuple[List[Optional[torch.Tensor]], List[str]]:
    """Output, then the gradients of the input and of every parameter (task + regularizer)."""
    wrapper.fast = fast
    x = x.clone().requires_grad_(True)
    torch.manual_seed(3)
    context = torch.autocast(x.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    with context:
        out = wrapper(x)
        loss = out.float().square().mean() + 1e-8 * wrapper.get_regularization_loss()
    names, params = zip(*wrapper.named_parameters())
    if scaler is not None:
        loss = scaler.scale(loss)
    grads = torch.autograd.grad(loss, (x,) + params, allow_unused=True)
    if scaler is not None:
        grads = tuple(None if g is None else g / scaler.get_scale() for g in grads)
    return [out.detach()] + list(grads), ["output", "input"] + list(names)


def _assert_fast_as_accurate(wrapper, x: torch.Tensor, dtype: torch.dtype, ulp: float,
                             scaler: Optional["torch.amp.GradScaler"] = None) -> None:
    truth, names = _run(wrapper, x, fast=False, autocast=None)
    fast, _ = _run(wrapper, x, fast=True, autocast=dtype, scaler=scaler)
    reference, _ = _run(wrapper, x, fast=False, autocast=dtype, scaler=scaler)
    assert fast[0].dtype == reference[0].dtype
    for name, t, f, r in zip(names, truth, fast, reference):
        if t is None or r is None or f is None:
            assert (f is None or not f.any()) and (r is None or not r.any()), f"{name} reached on one path only"
            continue
        assert f.dtype == r.dtype, name
        assert torch.isfinite(f).all(), name
        scale = float(t.abs().max())
        err_fast = float((f.double() - t.double()).abs().max())
        err_ref = float((r.double() - t.double()).abs().max())
        assert err_fast <= ERROR_FACTOR * max(err_ref, ulp * scale) + 1e-12, \
            f"{name}: fast error {err_fast:.3g}, reference error {err_ref:.3g}, scale {scale:.3g}"


# merged branches (issue, seed, linear_supernet), fused ReLU branches and BatchNorm (dscnn),
# padded convolutions and PIT alone (tcn); soft and hard mode (seed: a float32 Identity branch
# next to bfloat16 convolutions, so the output is float32 whichever branch is selected)
CPU_CASES = [("issue", False), ("issue", True), ("seed", False), ("seed", True), ("linear_supernet", False),
             ("dscnn", True), ("tcn", False)]


@pytest.mark.parametrize("name, hard", CPU_CASES)
def test_fast_is_as_accurate_as_eager_autocast_bf16_cpu(name, hard):
    wrapper, x = _workload(name)
    wrapper.eval()  # BatchNorm statistics fixed: the three runs see the same network
    if hasattr(wrapper, "update_softmax_options"):
        wrapper.update_softmax_options(hard=hard)
    _assert_fast_as_accurate(wrapper, x, torch.bfloat16, BF16_ULP)


@pytest.mark.parametrize("spec", [(2, 0), (0, 3), (1, 2)])
def test_padded_conv_under_autocast_is_eager_conv_of_padded_input(spec):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, generator=gen).requires_grad_(True)
    weight = torch.randn(4, 3, 3, generator=gen).requires_grad_(True)
    bias = torch.randn(4, generator=gen).requires_grad_(True)
    results = []
    for fn in (lambda: F.conv1d(F.pad(x, list(spec)), weight, bias),
               lambda: zero_padded_conv(x, weight, bias, (spec[0],), (spec[1],), (1,), (1,), 1)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn()
        grads = torch.autograd.grad((out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                    (x, weight, bias))
        results.append((out, grads))
    (out_e, grads_e), (out_z, grads_z) = results
    assert out_z.dtype == out_e.dtype == torch.bfloat16 and torch.equal(out_z, out_e)
    for a, b in zip(grads_z, grads_e):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)


def test_pit_layer_fused_masks_under_autocast_equal_the_maskers():
    torch.manual_seed(0)
    layer = PITConv1d(nn.Conv1d(3, 6, 5, padding=2), 10, PITFeaturesMasker(6), PITTimestepMasker(5),
                      PITDilationMasker(5))
    with torch.no_grad():
        layer.out_features_masker.alpha.uniform_(0, 1)
        layer.timestep_masker.beta.uniform_(0, 0.6)
    x = torch.randn(2, 3, 10)
    results: Dict[bool, Tuple] = {}
    for fused in (True, False):
        layer.use_fused_ops = fused
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        grads = torch.autograd.grad(out.float().sum(), list(layer.parameters()))
        results[fused] = (out, grads)
    assert results[True][0].dtype == torch.bfloat16 and torch.equal(results[True][0], results[False][0])
    for a, b in zip(results[True][1], results[False][1]):  # float32 sums in another order
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["issue", "tcn"])
@pytest.mark.parametrize("fast", [True, False])
def test_costs_stay_float32_under_autocast(name, fast):
    wrapper, _ = _workload(name)
    wrapper.fast = fast
    calls = [wrapper.get_size, wrapper.get_macs, wrapper.get_regularization_loss,
             lambda: wrapper.get_cost("macs", binarized=True)]
    expected = [call() for call in calls]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [call() for call in calls]
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_dilation_mask_is_computed_in_the_parameters_dtype_under_autocast():
    dilation = PITDilationMasker(9)
    with torch.no_grad():
        dilation.gamma.copy_(torch.tensor([0.25, 0.2500001, 0.5, 0.5]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theta = dilation.theta
    assert theta.dtype == torch.float32 and torch.equal(theta, dilation.theta)
    assert float(theta[-3].detach()) > 0.5  # distance 2 keeps its tap; in bfloat16 the sum would be 0.5 (pruned)


GPU_CASES = ["issue", "seed", "linear_supernet", "resnet8", "dscnn", "mobilenetv1", "tcn"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16_gradscaler", "bf16"])
def test_fast_is_as_accurate_as_eager_autocast_cuda(name, dtype):
    wrapper, x = _workload(name)
    wrapper = wrapper.cuda().eval()
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 12) if dtype == torch.float16 else None
    ulp = 2.0 ** -10 if dtype == torch.float16 else BF16_ULP
    for hard in (False, True):
        if hasattr(wrapper, "update_softmax_options"):
            wrapper.update_softmax_options(hard=hard)
        _assert_fast_as_accurate(wrapper, x.cuda(), dtype, ulp, scaler)
