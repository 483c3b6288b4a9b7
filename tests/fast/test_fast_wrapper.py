"""PITSuperNet / PIT with ``fast=True`` equal ``fast=False`` on every bench model: outputs and
gradients of the input, every weight and bias, every α and every PIT mask parameter, through
task loss + regularizer (float64 tight, float32 allclose); soft, hard and Gumbel modes. Also
the merge plan of the seed example and of each MLPerf Tiny supernet."""
import warnings

import pytest
import torch

from bench.models import count_supernets, workloads
from bench.search_step import build_wrapper, task_loss
from fast_helpers import RUNTIME_INPUT
from plinio.methods.pit_supernet import PITSuperNetModule

WORKLOADS = workloads()


def _wrapper(name: str, dtype: torch.dtype, seed: int = 0):
    """A wrapper of the workload with random α and PIT masks (some channels / taps pruned).
    Its ``fast`` switch flips between the fast and the reference path on the same weights."""
    torch.manual_seed(seed)
    model = WORKLOADS[name].factory().to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = build_wrapper(model, WORKLOADS[name].input_shape, fast=True)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in wrapper.named_nas_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
                    * (1.0 if pname.endswith("sn_combiner.alpha") else 0.6))
    return wrapper


def _grads(wrapper, x, targets, seed):
    """Output, then (input grad, parameter grads) of the task loss and of the regularizer,
    from one forward."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = wrapper(x)
    names, params = zip(*wrapper.named_parameters())
    task = task_loss(out, targets)
    reg = wrapper.get_regularization_loss()
    reg = reg / reg.detach().clamp_min(1.0)
    results = [out.detach()]
    for loss, retain in ((task, True), (reg, False)):
        grads = torch.autograd.grad(loss, (x,) + params, retain_graph=retain, allow_unused=True)
        results.append((grads[0], dict(zip(names, grads[1:]))))
    return results


def _set_modes(wrapper, hard: bool, gumbel: bool) -> None:
    for m in wrapper.modules():
        if isinstance(m, PITSuperNetModule):
            m.sn_combiner.gumbel_softmax = gumbel
    if hasattr(wrapper, "update_softmax_options"):
        wrapper.update_softmax_options(temperature=0.8, hard=hard)


def _assert_close_results(name, fast, ref, rtol, atol):
    (gx_f, g_f), (gx_r, g_r) = fast, ref
    if gx_r is None or gx_f is None:
        assert gx_r is None and gx_f is None
    else:
        torch.testing.assert_close(gx_f, gx_r, rtol=rtol, atol=atol)
    assert g_f.keys() == g_r.keys()
    pairs = []
    for key in g_r:
        a, b = g_r[key], g_f[key]
        if a is None or b is None:  # unreached on one path: must be unreached or zero on the other
            other = a if b is None else b
            assert other is None or not other.any(), f"{name}: gradient of {key}"
            continue
        pairs.append((key, a, b))
    flat_r = torch.cat([a.reshape(-1) for _, a, _ in pairs])
    flat_f = torch.cat([b.reshape(-1) for _, _, b in pairs])
    if not torch.allclose(flat_f, flat_r, rtol=rtol, atol=atol):  # one check, then name it
        for key, a, b in pairs:
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{name} {key}: {m}")





def _compare(name, wrapper, dtype, modes, rtol, atol, device="cpu"):
    """For each (hard, gumbel) mode: fast vs reference output and task-loss gradients at
    (rtol, atol), regularizer gradients at float32 accuracy (costs are float32 by contract)."""
    shape = (2,) + tuple(RUNTIME_INPUT.get(name, WORKLOADS[name].input_shape))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7),
                    dtype=torch.float64).to(dtype=dtype, device=device)
    wrapper.to(device)
    with torch.no_grad():
        probe = wrapper.eval()(x)
    targets = torch.arange(2, device=device) % probe.shape[1] if probe.dim() == 2 \
        else torch.empty(0, device=device)
    wrapper.train()
    for hard, gumbel in modes:
        _set_modes(wrapper, hard, gumbel)
        results = {}
        for fast in (True, False):
            wrapper.fast = fast
            results[fast] = _grads(wrapper, x, targets, seed=3)
        wrapper.fast = True
        label = f"{name} hard={hard} gumbel={gumbel}"
        torch.testing.assert_close(results[True][0], results[False][0], rtol=rtol, atol=atol)
        _assert_close_results(label, results[True][1], results[False][1], rtol, atol)
        _assert_close_results(label + " regularizer", results[True][2], results[False][2],
                              rtol=1e-4, atol=1e-6)


SUPERNET_WORKLOADS = [n for n in WORKLOADS if count_supernets(WORKLOADS[n].factory()) > 0]

EXPECTED_PLANS = {
    "seed": {"conv": ((0, 2, 3), (1,))},
    "linear_supernet": {f"blocks.{i}": ((0, 1, 3), (2,)) for i in range(3)},
    "resnet8": {"stem": ((), (0, 1, 2)), "stack1.conv1": ((), (0, 1, 2, 3)),
                "stack1.conv2": ((0, 1, 3), (2,)), "stack2.conv1": ((), (0, 1, 2)),
                "stack2.conv2": ((0, 1, 3), (2,)), "stack3.conv1": ((), (0, 1, 2)),
                "stack3.conv2": ((0, 1, 3), (2,))},
    # every block ends in ReLU (or has one inside the depthwise-separable branch): nothing is
    # a single convolution, so nothing merges; identity alone never merges
    "dscnn": {"stem": ((), (0, 1, 2)), **{f"blocks.{i}": ((), (0, 1, 2, 3)) for i in range(4)}},
    "mobilenetv1": {"stem": ((), (0, 1, 2)), **{
        f"blocks.{i}": ((), (0, 1, 2, 3) if i in (2, 4, 6, 7, 8, 9, 10, 12) else (0, 1, 2))
        for i in range(13)}},
}

# (dtype, modes as (hard, gumbel), rtol, atol) per workload: float64 where convolutions are
# cheap enough in float64 on a CPU, float32 allclose for the two largest inputs
SOFT_HARD = [(False, False), (True, False)]
CASES = {
    "seed": (torch.float64, SOFT_HARD + [(False, True), (True, True)], 1e-7, 1e-10),
    "linear_supernet": (torch.float64, SOFT_HARD + [(False, True), (True, True)], 1e-7, 1e-10),
    "resnet8": (torch.float64, SOFT_HARD, 1e-7, 1e-10),
    "tcn": (torch.float64, [(False, False)], 1e-7, 1e-10),
    "dscnn": (torch.float32, SOFT_HARD, 1e-3, 1e-4),
    "mobilenetv1": (torch.float32, SOFT_HARD, 1e-3, 1e-4),
}


def test_every_workload_is_covered():
    assert set(CASES) == set(WORKLOADS)
    assert set(EXPECTED_PLANS) == set(SUPERNET_WORKLOADS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_equals_reference(name):
    """Merge plan, then fast == reference in every listed mode (soft, hard, Gumbel)."""
    dtype, modes, rtol, atol = CASES[name]
    wrapper = _wrapper(name, dtype)
    if name in EXPECTED_PLANS:
        plan = wrapper.fast_plan
        plans = {k: (p.merged, p.separate) for k, p in plan["merge_plans"].items()}
        assert plans == EXPECTED_PLANS[name]
        assert plan["unoptimized"] == {}
    _compare(name, wrapper, dtype, modes, rtol, atol)


def test_seed_float32_allclose():
    _compare("seed", _wrapper("seed", torch.float32), torch.float32, SOFT_HARD, rtol=1e-3,
             atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_equals_reference_cuda(name):
    """The same comparison on a CUDA device (float64, so TF32 and kernel choice cannot hide
    a difference), where the fused ops run their GPU kernels."""
    _, modes, _, _ = CASES[name]
    _compare(name, _wrapper(name, torch.float64), torch.float64, modes, rtol=1e-6, atol=1e-9,
             device="cuda")


class _IdentityChoiceThenInPlaceReLU(torch.nn.Module):
    """A supernet whose Identity branch is chosen, then ``ReLU(inplace=True)`` on its output,
    while another layer reads the supernet's input too."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.sn = PITSuperNetModule([nn.Identity(), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))])
        self.act = nn.ReLU(inplace=True)
        self.side = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.act(self.sn(x)) + self.side(x)
        return self.head(y.flatten(2).mean(-1))


@pytest.mark.parametrize("grad", [True, False])
def test_hard_choice_of_identity_gives_a_new_tensor(grad: bool):
    """The fast hard path runs the chosen Identity branch alone, which returns its input: the
    supernet's output must still be a new tensor, as the reference's Σ θ_i·y_i, or the
    in-place ReLU after it changes the input the other layer reads."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = build_wrapper(_IdentityChoiceThenInPlaceReLU(), (3, 8, 8), fast=True)
    with torch.no_grad():
        dict(wrapper.named_nas_parameters())["seed.sn.sn_combiner.alpha"].copy_(torch.tensor([2.0, -1.0]))
    wrapper.eval()
    wrapper.update_softmax_options(hard=True)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    outputs = {}
    for fast in (True, False):
        wrapper.fast = fast
        with torch.set_grad_enabled(grad):
            outputs[fast] = wrapper(x)
    wrapper.fast = True
    torch.testing.assert_close(outputs[True], outputs[False], rtol=1e-5, atol=1e-6)
