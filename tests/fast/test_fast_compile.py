"""torch.compile: a full search step runs with fullgraph=True (no graph break), and changing
the temperature or hard/soft mode causes no recompilation. Uses the ``aot_eager`` backend
(dynamo capture + AOT autograd, no C++ code generation) to stay quick on a CPU."""
import pytest
import torch
import torch._dynamo

from plinio import ops
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
