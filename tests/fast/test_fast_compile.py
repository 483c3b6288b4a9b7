"""torch.compile: a full search step runs with fullgraph=True (no graph break), and changing
the temperature or hard/soft mode causes no recompilation. Uses the ``aot_eager`` backend
(dynamo capture + AOT autograd, no C++ code generation) to stay quick on a CPU."""
import pytest
import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F

from plinio import ops
from plinio.methods.pit_supernet import PITSuperNetModule
from fast_helpers import RUNTIME_INPUT, OneSuperNet, branch, randomize, set_mode, traced_pair


def _compile_available() -> bool:
    try:
        return bool(torch._dynamo.is_dynamo_supported())
    except Exception:  # dynamo missing or unsupported interpreter
        return False


pytestmark = pytest.mark.skipif(not _compile_available(),
                                reason="torch.compile is not supported on this platform")


def _model():
    kinds = [branch("conv", 2, 4, k=3), branch("padded_chain", 2, 4), branch("conv", 2, 4, k=5),
             branch("identity", 2, 4), branch("nonlinear", 2, 4)]
    model = OneSuperNet(kinds, 2, 3, 4, gumbel=True)
    randomize(model, 0)
    return model


def test_fast_supernet_step_compiles_without_breaks_or_recompiles():
    model = _model()
    _, fast = traced_pair(model)
    torch._dynamo.reset()
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(2, 3, 8, 8)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = compiled(x).square().mean()
        loss.backward()
        opt.step()
        return loss.detach()

    first = step()
    assert torch.isfinite(first)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for temperature, hard in [(0.5, False), (0.5, True), (2.0, True), (1.0, False)]:
            set_mode(model, hard=hard, temperature=temperature)
            assert torch.isfinite(step())
        model.eval()  # eval ⇄ train is a different graph by design: only check values there
    theta = model.sn.sn_combiner.theta_alpha.detach()
    assert torch.allclose(theta.sum(), torch.tensor(1.0))


def test_compiled_equals_eager():
    model = _model().double()
    model.eval()
    _, fast = traced_pair(model)
    torch._dynamo.reset()
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fast(x))


def _search_step_compiles(name, device="cpu", backend="aot_eager", ops_backend=None):
    """Forward under torch.compile(wrapper, fullgraph=True), the regularizer under its own
    torch.compile(fullgraph=True), backward and optimizer step; temperature / hard changes
    do not recompile either."""
    import warnings

    from bench.models import workloads
    from bench.search_step import build_wrapper

    workload = workloads()[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = build_wrapper(workload.factory(), workload.input_shape, fast=True)
    wrapper.to(device)
    ops.set_backend(ops_backend)  # after conversion, which runs the model on the CPU
    try:
        _compiled_steps(wrapper, name, workload, device, backend)
    finally:
        ops.set_backend(None)


def _compiled_steps(wrapper, name, workload, device, backend):
    from bench.search_step import task_loss

    torch._dynamo.reset()
    compiled = torch.compile(wrapper, fullgraph=True, backend=backend)
    regularizer = torch.compile(wrapper.get_regularization_loss, fullgraph=True, backend=backend)
    opt = torch.optim.Adam(wrapper.parameters(), lr=1e-3)
    x = torch.randn((2,) + tuple(RUNTIME_INPUT.get(name, workload.input_shape)), device=device)
    targets = torch.zeros(2, dtype=torch.long, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        out = compiled(x)
        cost = regularizer()
        torch.testing.assert_close(cost, wrapper.get_regularization_loss())
        loss = task_loss(out, targets) + 1e-9 * cost
        loss.backward()
        opt.step()
        return loss.detach()

    assert torch.isfinite(step())
    with torch._dynamo.config.patch(error_on_recompile=True):
        for temperature, hard in [(0.5, True), (2.0, False)]:
            if hasattr(wrapper, "update_softmax_options"):
                wrapper.update_softmax_options(temperature=temperature, hard=hard)
            assert torch.isfinite(step())


@pytest.mark.parametrize("name", ["seed", "resnet8", "dscnn", "mobilenetv1", "tcn"])
def test_bench_model_search_step_compiles(name):
    """Every bench model, with dynamo capture + AOT autograd (no code generation)."""
    _search_step_compiles(name)


@pytest.mark.gpu
@pytest.mark.parametrize("ops_backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", ["seed", "resnet8", "tcn"])
def test_bench_model_search_step_compiles_cuda_inductor(name, ops_backend):
    """On a GPU with inductor's generated kernels, the fused ops on either GPU backend."""
    if ops_backend not in ops.available_backends("cuda"):
        pytest.skip(f"plinio ops backend {ops_backend!r} is not available on CUDA")
    _search_step_compiles(name, device="cuda", backend="inductor", ops_backend=ops_backend)


# ---------------------------------------------------------- activations of a compiled graph

class _ActivationNet(nn.Module):
    """Every activation plinio.fast.compiled_activations routes: ReLU6, a supernet whose
    branches end in a ReLU (fused into combine) or hold one inside (in place), dropout (in
    place), F.relu, torch.dropout; PIT channel masks on every conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act6 = nn.ReLU6()
        self.sn = PITSuperNetModule([
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(inplace=True),
                          nn.Conv2d(8, 8, 1), nn.ReLU())])
        self.drop = nn.Dropout(0.3, inplace=True)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.sn(self.act6(self.stem(x) * 4)))
        x = torch.dropout(F.relu(self.conv(x)), 0.2, self.training)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _activation_search(fast: bool = True):
    from plinio.methods import PITSuperNet

    torch.manual_seed(0)
    search = PITSuperNet(_ActivationNet(), input_shape=(3, 8, 8), regularizer="macs", fast=fast)
    search.train()
    return search


def _step_results(forward, search, x, seed):
    """Output and every gradient of one training step, the RNG seeded (dropout)."""
    for p in search.parameters():
        p.grad = None
    torch.manual_seed(seed)
    out = forward(x)
    (out.square().sum() + 1e-6 * search.get_regularization_loss()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in search.named_parameters()
                          if p.grad is not None}


def _assert_compiled_equals_eager(backend, rtol, atol):
    search = _activation_search()
    x = torch.randn(4, 3, 8, 8)
    torch._dynamo.reset()
    compiled = torch.compile(search, fullgraph=True, backend=backend)
    for seed in (1, 2):
        want_out, want = _step_results(search, search, x, seed)
        got_out, got = _step_results(compiled, search, x, seed)
        # the same dropout masks: eager's noise from the same generator
        torch.testing.assert_close(got_out, want_out, rtol=rtol, atol=atol)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)


def test_compiled_activations_equal_eager_values_and_gradients():
    """ReLU / ReLU6 (in place too) and dropout in training mode, compiled through the wrapper:
    eager's values and gradients (the mask parameters' gradients are summed in another order:
    float rounding)."""
    _assert_compiled_equals_eager("aot_eager", rtol=1e-5, atol=1e-6)


def test_inductor_step_equals_eager():
    """With inductor's generated CPU code: its channels_last convolutions feed plinio's ops
    directly (flexible layouts), the masked weights are computed in the graph."""
    _assert_compiled_equals_eager("inductor", rtol=1e-4, atol=1e-5)


def _saved_tensors_of_compiled_step(search):
    """(forward graph, backward graph, tensors saved for backward) of a compiled step, with
    the partitioner inductor uses."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(gm, _):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=keep, bw_compiler=keep,
                           partition_fn=min_cut_rematerialization_partition)
    torch._dynamo.reset()
    compiled = torch.compile(search, fullgraph=True, backend=backend)
    _step_results(compiled, search, torch.randn(4, 3, 8, 8), seed=0)
    forward, backward = graphs
    saved = [n.meta["val"] for n in backward.graph.find_nodes(op="placeholder")
             if isinstance(n.meta.get("val"), torch.Tensor)]
    return forward, backward, saved


def _calls(gm, op):
    return len(gm.graph.find_nodes(op="call_function", target=op))


def test_compiled_fast_path_saves_no_bool_activation_mask():
    """The point of compiled_activations: no activation-sized bool tensor is saved for backward
    (the reference path, compiled as it is, saves some: the check can fail); ReLU backwards are
    plinio::relu_backward calls, the dropout noise comes from plinio::dropout_noise; the
    masked weights are products in the graph."""
    forward, backward, saved = _saved_tensors_of_compiled_step(_activation_search())
    assert not [t.shape for t in saved if t.dtype == torch.bool and t.numel() > 8]
    assert _calls(forward, torch.ops.plinio.dropout_noise.default) == 2
    # ReLU6, the in-place ReLU inside a branch, F.relu (the branches' last ReLUs are fused
    # into combine)
    assert _calls(backward, torch.ops.plinio.relu_backward.default) == 3
    # masked weights: the masks from the op, their product in the graph (inductor fuses it
    # with its layout change)
    assert _calls(forward, torch.ops.plinio.pit_masked_weight.default) == 0
    assert _calls(forward, torch.ops.plinio.pit_masks.default) > 0
    _, _, saved_reference = _saved_tensors_of_compiled_step(_activation_search(fast=False))
    assert [t for t in saved_reference if t.dtype == torch.bool and t.numel() > 8]


_ROUTED = {
    "nn.ReLU": lambda x: nn.ReLU()(x), "F.relu": F.relu, "torch.relu": torch.relu,
    "Tensor.relu": lambda x: x.relu(), "torch.relu_": lambda x: torch.relu_(x * 1),
    "Tensor.relu_": lambda x: (x * 1).relu_(), "nn.ReLU(inplace)": lambda x: nn.ReLU(True)(x * 1),
    "nn.ReLU6": lambda x: nn.ReLU6()(x), "F.relu6": F.relu6,
    "F.hardtanh(0, 3)": lambda x: F.hardtanh(x, 0.0, 3.0),
}
_LEFT_AS_THEY_ARE = {
    "F.hardtanh(-1, 1)": lambda x: F.hardtanh(x, -1.0, 1.0), "F.leaky_relu": F.leaky_relu,
}


@pytest.mark.parametrize("name", sorted(_ROUTED) + sorted(_LEFT_AS_THEY_ARE))
def test_activation_calls_routed_by_the_mode(name):
    """Under the mode (entered directly here: the wrappers enter it only while torch.compile
    traces), each ReLU / ReLU6 spelling runs plinio.ops.relu with PyTorch's values and
    gradients; other activations keep PyTorch's own autograd node."""
    from plinio.fast.compiled_activations import _CompiledActivations

    fn = {**_ROUTED, **_LEFT_AS_THEY_ARE}[name]
    x = (torch.randn(3, 4, 5, dtype=torch.float64) * 4).requires_grad_()
    with torch.no_grad():
        x[0, 0, :3] = torch.tensor([0.0, 3.0, 6.0])
    g = torch.randn(3, 4, 5, dtype=torch.float64)
    want = fn(x)
    with _CompiledActivations():
        got = fn(x)
    routed = "ReLUSavingOutput" in type(got.grad_fn).__name__ or (
        type(got.grad_fn).__name__ == "CopyBackwards"
        and "ReLUSavingOutput" in type(got.grad_fn.next_functions[1][0]).__name__)
    assert routed == (name in _ROUTED), type(got.grad_fn).__name__
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0],
                               rtol=0, atol=0)


def _dispatched_ops(fn, *args):
    """(result, names of the ops ``fn`` dispatched)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.append(str(func.name()))
            return func(*args, **(kwargs or {}))

    with Record():
        out = fn(*args)
    return out, names


def test_dropout_calls_routed_by_the_mode():
    """Training-mode dropout (module, function, torch.dropout, in place) draws eager's noise
    through plinio::dropout_noise under the mode; evaluation mode and p = 0 return the input
    as PyTorch does."""
    from plinio.fast.compiled_activations import _CompiledActivations

    x = torch.randn(6, 7)
    calls = [lambda t: nn.Dropout(0.3)(t), lambda t: F.dropout(t, 0.3),
             lambda t: torch.dropout(t, 0.3, True), lambda t: nn.Dropout(0.3, inplace=True)(t * 1)]
    for call in calls:
        torch.manual_seed(4)
        want = call(x)
        torch.manual_seed(4)
        with _CompiledActivations():
            got, names = _dispatched_ops(call, x)
        assert "plinio::dropout_noise" in names
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with _CompiledActivations():
        assert nn.Dropout(0.3).eval()(x) is x
        assert torch.equal(F.dropout(x, 0.0), x)
