"""plinio::small_conv and its two gradient ops (the direct CPU convolution of few channels
used by sparse execution): aten's values and gradients for every geometry it takes (1-D and
2-D, dilation, stride, groups and depthwise, asymmetric and negative padding, every
channel-tile tail and kernel width), in every layout, independent of the thread count; fakes
and schemas (opcheck); clear errors."""
import pytest
import torch
import torch.nn.functional as F

from ops_backends import require

pytestmark = pytest.mark.usefixtures("cpp_ops")


@pytest.fixture
def cpp_ops():
    require("cpp", "cpu")


def _reference(x, w, b, stride, before, after, dilation, groups):
    """conv(x, w, b) with explicit per-side zero padding (negative: cropped), in float64."""
    spec = [p for i in reversed(range(x.dim() - 2)) for p in (before[i], after[i])]
    conv = F.conv1d if x.dim() == 3 else F.conv2d
    return conv(F.pad(x, spec), w, b, stride=stride, dilation=dilation, groups=groups)


def _in_layout(t, layout):
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":  # (N, L, C) in memory for 1-D, as sparse execution lifts them
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else \
            t.transpose(1, 2).contiguous().transpose(1, 2)
    return torch.stack([t, t], dim=-1)[..., 0]  # a strided view: every stride doubled


# (in, out, kernel, spatial size, padding before, after, dilation, stride, groups)
CASES = [
    (4, 4, (5, 5), (9, 13), (2, 2), (2, 2), (1, 1), (1, 1), 1),
    (3, 5, (3, 3), (9, 13), (1, 0), (0, 2), (1, 2), (1, 1), 1),
    (2, 9, (3, 4), (7, 20), (3, 1), (0, 2), (2, 1), (1, 1), 1),
    (8, 7, (7, 7), (12, 40), (3, 3), (3, 3), (1, 1), (1, 1), 1),
    (1, 1, (1, 6), (3, 17), (0, 5), (0, 0), (1, 1), (1, 1), 1),
    (4, 6, (3,), (37,), (4,), (0,), (2,), (1,), 1),
    (5, 3, (7,), (33,), (-1,), (3,), (1,), (1,), 1),
    (4, 16, (2,), (70,), (1,), (0,), (3,), (1,), 1),
    (6, 2, (5,), (16,), (8,), (0,), (2,), (1,), 1),
    # strided: phase planes with zero taps, odd sizes, a stride wider than the kernel
    (4, 8, (5, 5), (32, 32), (2, 2), (2, 2), (1, 1), (2, 2), 1),
    (2, 3, (4, 4), (21, 19), (-1, 2), (0, 0), (1, 1), (3, 2), 1),
    (3, 3, (1, 3), (16, 17), (0, 1), (0, 1), (1, 1), (2, 2), 1),
    (6, 4, (3, 5), (17, 23), (0, 2), (1, -1), (1, 1), (2, 3), 2),
    (3, 5, (5,), (41,), (2,), (3,), (1,), (3,), 1),
    # groups and depthwise, with stride or dilation
    (4, 4, (3, 3), (32, 32), (1, 1), (1, 1), (1, 1), (1, 1), 4),
    (4, 4, (3, 3), (31, 32), (1, 1), (1, 1), (1, 1), (2, 2), 4),
    (6, 6, (3, 3), (15, 31), (1, 1), (1, 1), (2, 1), (1, 2), 6),
    (4, 4, (7,), (40,), (6,), (0,), (2,), (1,), 4),
]


def _case_id(c) -> str:
    return f"{c[0]}-{c[1]}-k{'x'.join(map(str, c[2]))}-d{c[6]}-s{c[7]}-g{c[8]}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
def test_values_and_gradients_are_atens(case, layout):
    ci, co, kernel, spatial, before, after, dilation, stride, groups = case
    g = torch.Generator().manual_seed(sum(spatial) + ci * 7 + co)
    x = torch.randn(5, ci, *spatial, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(co, ci // groups, *kernel, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(co, generator=g, dtype=torch.float64)
    y = _reference(x, w, b, stride, before, after, dilation, groups)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    xf, gyf = _in_layout(x.detach().float(), layout), _in_layout(gy.float(), layout)
    wf, bf = w.detach().float(), b.float()
    args = (list(stride), list(before), list(after), list(dilation), groups)
    got_y = torch.ops.plinio.small_conv(xf, wf, bf, *args)
    got_gx = torch.ops.plinio.small_conv_input_grad(gyf, wf, list(x.shape), *args)
    got_gw = torch.ops.plinio.small_conv_weight_grad(gyf, xf, list(w.shape), *args)
    for got, want in ((got_y, y), (got_gx, gx), (got_gw, gw)):
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("ndim", [1, 2])
def test_results_have_the_layout_they_read(ndim):
    spatial = (6, 20) if ndim == 2 else (20,)
    kernel = (3,) * ndim
    pad = [1] * ndim
    ones = [1] * ndim
    w = torch.randn(3, 2, *kernel)
    for layout in ("contiguous", "channels_last"):
        x = _in_layout(torch.randn(4, 2, *spatial), layout)
        gy = _in_layout(torch.randn(4, 3, *spatial), layout)
        y = torch.ops.plinio.small_conv(x, w, None, ones, pad, pad, ones, 1)
        gx = torch.ops.plinio.small_conv_input_grad(gy, w, list(x.shape), ones, pad, pad, ones, 1)
        assert y.stride() == _in_layout(torch.empty(y.shape), layout).stride()
        assert gx.stride() == x.stride()


@pytest.mark.parametrize("channels, stride, groups", [(4, 1, 1), (4, 2, 4)])
def test_weight_gradient_does_not_depend_on_the_thread_count(channels, stride, groups):
    x = torch.randn(23, channels, 16, 32)
    gy = torch.randn(23, 5 if groups == 1 else channels, 16 // stride, 32 // stride)
    size = [gy.shape[1], channels // groups, 3, 3]
    args = ([stride] * 2, [1, 1], [1, 1], [1, 1], groups)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(torch.ops.plinio.small_conv_weight_grad(gy, x, size, *args))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_ops_pass_opcheck():
    x = torch.randn(3, 4, 8, 20).contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 4, 3, 3)
    gy = torch.randn(3, 5, 8, 20).contiguous(memory_format=torch.channels_last)
    args = ([1, 1], [1, 1], [1, 1], [1, 1], 1)
    torch.library.opcheck(torch.ops.plinio.small_conv, (x, w, torch.randn(5)) + args)
    torch.library.opcheck(torch.ops.plinio.small_conv_input_grad, (gy, w, list(x.shape)) + args)
    torch.library.opcheck(torch.ops.plinio.small_conv_weight_grad, (gy, x, list(w.shape)) + args)
    x1 = torch.randn(3, 4, 30)
    torch.library.opcheck(torch.ops.plinio.small_conv, (x1, torch.randn(2, 4, 5), None, [1], [4], [0], [2], 1))
    # strided and depthwise: the fakes' output sizes
    wd, gyd = torch.randn(4, 1, 3, 3), torch.randn(3, 4, 4, 10).contiguous(memory_format=torch.channels_last)
    strided = ([2, 2], [1, 1], [1, 1], [1, 1], 4)
    torch.library.opcheck(torch.ops.plinio.small_conv, (x, wd, None) + strided)
    torch.library.opcheck(torch.ops.plinio.small_conv_input_grad, (gyd, wd, list(x.shape)) + strided)
    torch.library.opcheck(torch.ops.plinio.small_conv_weight_grad, (gyd, x, list(wd.shape)) + strided)


def test_errors_name_the_op_and_the_fix():
    x, w = torch.randn(2, 3, 8, 20), torch.randn(4, 3, 3, 3)
    pads = ([1, 1], [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"plinio::small_conv: input must be float32, got Double "
                                           r"\(other dtypes run aten's convolution\)"):
        torch.ops.plinio.small_conv(x.double(), w.double(), None, *pads)
    with pytest.raises(RuntimeError, match=r"plinio::small_conv: kernel width 8 is not supported \(1 to 7"):
        torch.ops.plinio.small_conv(x, torch.randn(4, 3, 3, 8), None, *pads)
    with pytest.raises(RuntimeError, match=r"plinio::small_conv: weight of shape \[4, 2, 3, 3\] does not fit"):
        torch.ops.plinio.small_conv(x, torch.randn(4, 2, 3, 3), None, *pads)
    with pytest.raises(RuntimeError, match=r"groups=2 must divide the 4 input and 3 output channels"):
        torch.ops.plinio.small_conv(torch.randn(2, 4, 8, 20), torch.randn(4, 2, 3, 3)[:3], None, [1, 1], [1, 1],
                                    [1, 1], [1, 1], 2)
    with pytest.raises(RuntimeError, match=r"needs 2 values each of stride, padding_before, padding_after and "
                                           r"dilation"):
        torch.ops.plinio.small_conv(x, w, None, [1, 1], [1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"dilation must be >= 1"):
        torch.ops.plinio.small_conv(x, w, None, [1, 1], [1, 1], [1, 1], [0, 1], 1)
    with pytest.raises(RuntimeError, match=r"stride must be >= 1"):
        torch.ops.plinio.small_conv(x, w, None, [0, 1], [1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"a strided dimension needs dilation 1; aten's convolution runs"):
        torch.ops.plinio.small_conv(x, w, None, [2, 1], [1, 1], [1, 1], [2, 1], 1)
    with pytest.raises(RuntimeError, match=r"is smaller than the dilated kernel"):
        torch.ops.plinio.small_conv(x, w, None, [1, 1], [-4, 0], [-3, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match=r"plinio::small_conv: bias must be a float32 CPU vector of 4"):
        torch.ops.plinio.small_conv(x, w, torch.randn(3), *pads)
    gy = torch.randn(2, 4, 8, 20)
    with pytest.raises(RuntimeError, match=r"plinio::small_conv_input_grad: grad .* do not fit one convolution"):
        torch.ops.plinio.small_conv_input_grad(gy, w, [2, 5, 8, 20], *pads)
    with pytest.raises(RuntimeError, match=r"plinio::small_conv_weight_grad: grad of shape .* is not the output"):
        torch.ops.plinio.small_conv_weight_grad(gy, x, [4, 3, 5, 5], *pads)
