"""plinio.ops.pit_masks / pit_masked_weight: the examples of docs/behaviour.md §5.1, the
reference, and every backend against the reference (values, straight-through gradients,
layouts, dtypes)."""
import itertools

import pytest
import torch

import plinio.ops as ops
from plinio.ops import reference
from ops_backends import backend_params, forced, require

ALL_BACKENDS = [pytest.param(("reference", "cpu"), id="reference")] + backend_params()


# ---------------------------------------------------------- docs/behaviour.md §5.1 examples

def test_reference_theta_examples():
    beta = torch.tensor([0.25, 0.4, 0.4])
    torch.testing.assert_close(reference.theta_beta(beta), torch.tensor([0.25, 0.65, 1.65]))
    gamma = torch.tensor([0.2, 0.5])
    torch.testing.assert_close(reference.theta_gamma(gamma, 3), torch.tensor([1.2, 0.2, 1.2]))
    assert [reference.dilation_levels(k) for k in (1, 2, 3, 4, 5, 9, 17)] == [1, 1, 2, 2, 3, 4, 5]


@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
def test_spec_mask_examples(backend_device):
    backend, device = backend_device
    require(backend, device)
    beta = torch.tensor([0.25, 0.4, 0.4], device=device)
    gamma = torch.tensor([0.2, 0.5], device=device)
    with forced(backend):
        _, m_beta = ops.pit_masks(None, beta)
        _, m_gamma = ops.pit_masks(None, None, gamma, kernel_size=3)
        _, m_time = ops.pit_masks(None, beta, gamma)
        channel, none = ops.pit_masks(torch.tensor([0.0, 0.6, 0.5, 0.0], device=device))
    assert m_beta.tolist() == [0.0, 1.0, 1.0]
    assert m_gamma.tolist() == [1.0, 0.0, 1.0]
    assert m_time.tolist() == [0.0, 0.0, 1.0]
    assert channel.tolist() == [0.0, 1.0, 0.0, 1.0]  # 0.5 is not > 0.5; last kept alive
    assert none is None


@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
def test_dilation_keeps_multiples_of_the_stride_from_the_newest_tap(backend_device):
    backend, device = backend_device
    require(backend, device)
    # K = 9, L = 4 (the last γ is forced to 1): γ = [0, 1, 0, ·] keeps taps at distances
    # multiple of 2 from tap 8, γ = [0, 0, 0, ·] keeps distances multiple of 8 (taps 0, 8).
    with forced(backend):
        _, m2 = ops.pit_masks(None, None, torch.tensor([0.0, 1.0, 0.0, 9.0], device=device),
                              kernel_size=9)
        _, m8 = ops.pit_masks(None, None, torch.tensor([0.0, 0.0, 0.0, 9.0], device=device),
                              kernel_size=9)
    assert m2.tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert m8.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize("backend_device", ALL_BACKENDS)
def test_keep_alive_and_straight_through_gradients(backend_device):
    backend, device = backend_device
    require(backend, device)
    alpha = torch.tensor([0.0, -0.7, 0.3, 0.0, 0.9], device=device, requires_grad=True)
    beta = torch.tensor([-0.3, 0.0, 0.4, 0.2], device=device, requires_grad=True)
    gamma = torch.tensor([0.0, -0.6], device=device, requires_grad=True)
    with forced(backend):
        channel, time = ops.pit_masks(alpha, beta, gamma, keep_alive=2)
    assert channel.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]
    gc = torch.arange(1.0, 6.0, device=device)
    gt = torch.tensor([1.0, 10.0, 100.0, 1000.0], device=device)
    (channel * gc).sum().add((time * gt).sum()).backward()
    # STE: dθ/dα = sign(α) (0 at 0); the last keep_alive entries get no gradient.
    assert alpha.grad.tolist() == [0.0, -2.0, 3.0, 0.0, 0.0]
    # time = m_β ⊙ m_γ; m_β = [0, 0, 1, 1], m_γ (K=4, L=2): taps at even distance from the
    # newest get γ̂0+γ̂1 = 1 → 1, odd distance γ̂0 = 0 → 0: m_γ = [0, 1, 0, 1].
    m_beta = [0.0, 0.0, 1.0, 1.0]
    m_gamma = [0.0, 1.0, 0.0, 1.0]
    g_beta_mask = [g * m for g, m in zip(gt.tolist(), m_gamma)]
    suffix = [sum(g_beta_mask[j:]) for j in range(4)]
    assert beta.grad.tolist() == [-suffix[0], 0.0, suffix[2], 0.0]
    g_gamma_mask = [g * m for g, m in zip(gt.tolist(), m_beta)]
    # γ̂0 feeds every tap; γ̂1 is forced to 1 (no gradient); sign(γ0) = 0 anyway.
    assert gamma.grad.tolist() == [0.0, 0.0]
    assert sum(g_gamma_mask) == 1100.0


# -------------------------------------------------------------- masked weight vs reference

LAYERS = {
    "linear": ((6, 5), False),
    "conv1d": ((6, 4, 9), True),
    "conv1d_k3": ((5, 2, 3), True),
    "conv1d_k1": ((4, 3, 1), True),
    "conv2d": ((6, 3, 3, 3), False),
    # rows longer than the CPU loops' tile, over several parallel tasks
    "conv1d_long_rows": ((40, 130, 9), True),
    "conv2d_many_rows": ((96, 64, 5, 5), False),
}


def _params(shape, timed, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return (torch.rand(*s, generator=g, dtype=torch.float64) * 1.6 - 0.8).to(dtype).to(device)

    w = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device).requires_grad_()
    b = torch.randn(shape[0], generator=g, dtype=torch.float64).to(dtype).to(device).requires_grad_()
    alpha = rnd(shape[0]).requires_grad_()
    beta = gamma = None
    if timed:
        beta = rnd(shape[-1]).requires_grad_()
        gamma = rnd(reference.dilation_levels(shape[-1])).requires_grad_()
    return w, b, alpha, beta, gamma


def _compare(backend, w, b, alpha, beta, gamma, keep_alive=1, tol=1e-5):
    with forced(backend):
        got = ops.pit_masked_weight(w, b, alpha, beta, gamma, keep_alive=keep_alive,
                                    return_masks=True)
    want = reference.pit_masked_weight(w, b, alpha, beta, gamma, keep_alive=keep_alive)
    for g_, w_ in zip(got, want):
        assert (g_ is None) == (w_ is None)
        if g_ is not None:
            assert torch.equal(g_, w_), "masks multiply by exactly 0. or 1."
    # (the fused op's outputs all carry a grad_fn; compare where the reference has one)
    keep = [i for i, o in enumerate(want) if o is not None and o.requires_grad]
    outs = [got[i] for i in keep]
    refs = [want[i] for i in keep]
    inputs = [t for t in (w, b, alpha, beta, gamma) if t is not None and t.requires_grad]
    gen = torch.Generator().manual_seed(7)
    cots = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in outs]
    got_g = torch.autograd.grad(outs, inputs, cots, allow_unused=True)
    want_g = torch.autograd.grad(refs, inputs, cots, allow_unused=True)
    for a, r in zip(got_g, want_g):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, rtol=tol, atol=tol)
    return got


@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("with_bias", [True, False])
def test_masked_weight_matches_reference(backend_device, layer, with_bias):
    backend, device = backend_device
    require(backend, device)
    shape, timed = LAYERS[layer]
    w, b, alpha, beta, gamma = _params(shape, timed, device, seed=len(layer))
    _compare(backend, w, b if with_bias else None, alpha, beta, gamma)


@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("present", [c for c in itertools.product([True, False], repeat=3)])
def test_any_subset_of_masks_and_detached_params(backend_device, present):
    backend, device = backend_device
    require(backend, device)
    w, b, alpha, beta, gamma = _params((5, 3, 5), True, device, seed=3)
    alpha, beta, gamma = [p if keep else None for p, keep in zip((alpha, beta, gamma), present)]
    _compare(backend, w, b, alpha, beta, gamma)
    # frozen mask kinds are passed detached: no gradient for them, the rest unchanged
    frozen = [p.detach() if p is not None else None for p in (alpha, beta, gamma)]
    _compare(backend, w, b, *frozen)


@pytest.mark.parametrize("backend_device", backend_params())
def test_keep_alive_values(backend_device):
    backend, device = backend_device
    require(backend, device)
    w, b, alpha, _, _ = _params((6, 4), False, device, seed=5)
    for keep in (0, 1, 3, 6):
        _compare(backend, w, b, alpha, None, None, keep_alive=keep)


@pytest.mark.parametrize("backend_device", backend_params())
def test_channels_last_conv2d_weight(backend_device):
    backend, device = backend_device
    require(backend, device)
    w, b, alpha, _, _ = _params((6, 4, 3, 3), False, device, seed=9)
    w = w.detach().to(memory_format=torch.channels_last).requires_grad_()
    got = _compare(backend, w, b, alpha, None, None)
    assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend_device", backend_params())
def test_non_contiguous_weight(backend_device):
    backend, device = backend_device
    require(backend, device)
    w, b, alpha, beta, gamma = _params((6, 4, 9), True, device, seed=11)
    wt = w.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    _compare(backend, wt, b, alpha, beta, gamma)


@pytest.mark.parametrize("backend_device", backend_params())
def test_pruned_rows_are_zero_and_kept_rows_bit_identical(backend_device):
    backend, device = backend_device
    require(backend, device)
    w = torch.randn(4, 3, 5, device=device)
    b = torch.randn(4, device=device)
    alpha = torch.tensor([1.0, 0.1, 0.7, 0.2], device=device)
    with forced(backend):
        mw, mb = ops.pit_masked_weight(w, b, alpha)
    assert torch.equal(mw[[0, 2, 3]], w[[0, 2, 3]]) and torch.equal(mb[[0, 2, 3]], b[[0, 2, 3]])
    assert torch.count_nonzero(mw[1]) == 0 and mb[1] == 0


@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(backend_device, dtype):
    backend, device = backend_device
    require(backend, device)
    w, b, alpha, beta, gamma = _params((6, 4, 9), True, device, dtype=dtype, seed=13)
    _compare(backend, w, b, alpha, beta, gamma, tol=2e-2)


@pytest.mark.parametrize("backend_device", backend_params())
def test_gradcheck_float64(backend_device):
    """Weight and bias gradients are true derivatives (the masks are constants there); the
    mask-parameter gradients are straight-through estimates, checked against the
    reference above instead."""
    backend, device = backend_device
    require(backend, device)
    for shape, timed in (((3, 2, 5), True), ((3, 2, 2, 2), False), ((3, 4), False)):
        w, b, alpha, beta, gamma = _params(shape, timed, device, dtype=torch.float64, seed=17)
        masks = [p.detach() if p is not None else None for p in (alpha, beta, gamma)]
        with forced(backend):
            assert torch.autograd.gradcheck(
                lambda w_, b_: ops.pit_masked_weight(w_, b_, *masks), (w, b))


@pytest.mark.parametrize("backend_device", [p for p in backend_params()
                                            if p.id != "triton-interp"])
def test_opcheck(backend_device):
    backend, device = backend_device
    require(backend, device)
    prefix = "triton_" if backend == "triton" else ""
    masked = getattr(torch.ops.plinio, prefix + "pit_masked_weight")
    masks = getattr(torch.ops.plinio, prefix + "pit_masks")
    w, b, alpha, beta, gamma = _params((6, 4, 9), True, device, seed=19)
    torch.library.opcheck(masked, (w, b, alpha, beta, gamma, 0.5, 1))
    torch.library.opcheck(masked, (w, None, alpha, None, None, 0.5, 1))
    torch.library.opcheck(masks, (alpha, beta, gamma, 9, 0.5, 1))
    torch.library.opcheck(masks, (None, None, gamma, 9, 0.5, 1))
    w2, b2, a2, _, _ = _params((6, 4, 3, 3), False, device, seed=21)
    w2 = w2.detach().to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(masked, (w2, b2, a2, None, None, 0.5, 2))


@pytest.mark.triton_interpret
def test_triton_interpreter_schema_and_autograd_registration():
    require("triton", "cpu")
    from plinio.ops import triton as triton_backend

    triton_backend.ops()
    w, b, alpha, beta, gamma = _params((6, 4, 9), True, "cpu", seed=19)
    torch.library.opcheck(torch.ops.plinio.triton_pit_masked_weight,
                          (w, b, alpha, beta, gamma, 0.5, 1),
                          test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_fullgraph(backend):
    require(backend, "cpu")
    w, b, alpha, beta, gamma = _params((6, 4, 9), True, "cpu", seed=23)
    with forced(backend):
        fn = torch.compile(lambda *a: ops.pit_masked_weight(*a), fullgraph=True,
                           backend="aot_eager")
        mw, mb = fn(w, b, alpha, beta, gamma)
    want = reference.pit_masked_weight(w, b, alpha, beta, gamma)
    assert torch.equal(mw, want[0]) and torch.equal(mb, want[1])


# ------------------------------------------------------------------------- error cases

@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_errors(backend):
    require(backend, "cpu")
    w3, w4 = torch.randn(4, 3, 5), torch.randn(4, 3, 3, 3)
    a4 = torch.ones(4)
    with forced(backend):
        with pytest.raises(ValueError, match="alpha has 3 entries but the layer has 4"):
            ops.pit_masked_weight(w3, None, torch.ones(3))
        with pytest.raises(ValueError, match="Conv1d weights"):
            ops.pit_masked_weight(w4, None, a4, torch.ones(3))
        with pytest.raises(ValueError, match="beta has 4 entries but the kernel size is 5"):
            ops.pit_masked_weight(w3, None, a4, torch.ones(4))
        with pytest.raises(ValueError, match="gamma must have 3 entries"):
            ops.pit_masked_weight(w3, None, a4, None, torch.ones(2))
        with pytest.raises(ValueError, match="alpha/beta/gamma must share one dtype"):
            ops.pit_masked_weight(w3, None, a4, torch.ones(5, dtype=torch.float64))
        with pytest.raises(ValueError, match="bias must have the weight's dtype"):
            ops.pit_masked_weight(w3, torch.ones(4, dtype=torch.float64), a4)
        with pytest.raises(ValueError, match="bias must have shape"):
            ops.pit_masked_weight(w3, torch.ones(3), a4)
        with pytest.raises(ValueError, match="2-D .* 3-D .* 4-D"):
            ops.pit_masked_weight(torch.ones(4), None, a4)
        with pytest.raises(ValueError, match="keep_alive"):
            ops.pit_masked_weight(w3, None, a4, keep_alive=5)
        with pytest.raises(ValueError, match="kernel_size"):
            ops.pit_masks(None, None, torch.ones(2))
    assert w3.shape == (4, 3, 5) and not w3.requires_grad  # inputs untouched
