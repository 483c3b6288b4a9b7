"""When a compact convolution of sparse execution runs ``plinio::small_conv`` (a direct CPU
convolution for a few channels, ``csrc/cpu/small_conv_cpu.cpp``) instead of aten's.

oneDNN runs a convolution of a few channels at a fraction of its usual speed (a 4 -> 4
channel 5×5 convolution of 32×32 images: ~20 GMAC/s on a core that runs a 64-channel one at
~100), and a heavily pruned layer keeps exactly that few. The direct kernel vectorizes along
the image rows instead of the channels, so its rate hardly depends on the channel count, and
it splits the batch among the threads; it takes any dilation at stride 1, any stride without
dilation (as a stride-1 convolution of the input's phase planes, with zero taps), groups 1 or
depthwise, per-side padding, kernel rows of 1 to 7 taps, float32, 1-D and 2-D.

The rule below comes from ``bench/bench_small_conv.py`` (forward + both gradients, batch 32,
1 and 2 threads; the tables are in bench/RESULTS.md). The direct kernel is faster than oneDNN
on rows of 16+ outputs with a kernel of 3+ taps per row (a 1×1 or 1×2 kernel is a small
matrix product, which oneDNN does well) up to a channel count that depends on its loops, the
kind of convolution and, for 1-D convolutions, on the threads: a second thread speeds it up
(it splits the batch) more than oneDNN's 1-D convolution (16 channels: 1.15 of oneDNN's time
with 1 thread, 0.78 with 2). A strided convolution pays for its zero taps and short rows (a
4 -> 8 channel 5×5 one at stride 2: 0.8 of oneDNN's time with AVX-512, 1.0 with AVX2), a
depthwise one for the layout copies around its few products per output (4 channels: 0.6-0.8
of oneDNN's time with AVX-512, 0.9-1.1 with AVX2). The baseline copy of the loops is never
used.

The table times each pass alone. Per-pass limits (the input gradient gains the most: up to 12
channels at stride 1, and strided or depthwise ones of 8, while the weight gradient of a 3×3
kernel of 8 channels and a strided or depthwise forward lose) measured no faster in a search
step (ResNet-8 and the TCN at 75 % pruned, 2 threads, same-process A/B: 1.02 and 1.03–1.04 of
the step with one limit per convolution): oneDNN is slower inside a step than alone.
"""
import functools

import torch

from plinio import _extension

from .linear_ops import ConvGeometry

MIN_ROW = 16        # output positions per row (shorter rows leave the vectors part empty)
MIN_KERNEL_WIDTH = 3
MAX_KERNEL_WIDTH = 7  # the weight-gradient loops unroll up to this many taps per row
# most input/output channels, per copy of the loops and kind of convolution:
# {isa: {kind: {(ndim, more than one thread): channels}}}; absent: never (not measured faster)
_CHANNEL_LIMITS = {
    "avx512": {"stride1": {(2, False): 8, (2, True): 8, (1, False): 8, (1, True): 16},
               "strided": {(2, False): 8, (2, True): 8},
               "depthwise": {(2, False): 4, (2, True): 4}},
    "avx2": {"stride1": {(2, False): 4, (2, True): 4, (1, False): 8, (1, True): 8}},
}


@functools.lru_cache(maxsize=None)
def loops_isa() -> str:
    """The copy of the direct kernel's loops this process runs ('avx512', 'avx2', 'base'), or
    'none' when the extension is not built or predates the kernel."""
    if not _extension.load():
        return "none"
    import plinio._C as ext  # loaded by _extension.load()
    isa = getattr(ext, "small_conv_isa", None)
    return isa() if isa is not None else "none"


def kind(geometry: ConvGeometry) -> str:
    """The kind of convolution the channel limits distinguish: 'depthwise', 'strided' or 'stride1'."""
    if geometry.groups > 1:
        return "depthwise"
    return "strided" if any(s > 1 for s in geometry.stride) else "stride1"


def channel_limit(ndim: int, threads: int, kind: str = "stride1") -> int:
    """Most input/output channels at which a ``ndim``-D convolution of this ``kind`` runs the
    direct kernel with ``threads`` threads (0: never)."""
    return _CHANNEL_LIMITS.get(loops_isa(), {}).get(kind, {}).get((ndim, threads > 1), 0)


def geometry_fits(geometry: ConvGeometry) -> bool:
    """Whether a layer of this geometry can run the direct kernel (its channel counts are
    decided per call, by :func:`runs_direct`)."""
    depthwise = geometry.groups == geometry.in_channels == geometry.out_channels
    return (geometry.groups == 1 or depthwise) and geometry.ndim in (1, 2) \
        and all(s == 1 or d == 1 for s, d in zip(geometry.stride, geometry.dilation)) \
        and MIN_KERNEL_WIDTH <= geometry.kernel[-1] <= MAX_KERNEL_WIDTH


def runs_direct(t: torch.Tensor, geometry: ConvGeometry, channels_a: int, channels_b: int, row: int) -> bool:
    """Whether a convolution of ``geometry`` between ``channels_a`` and ``channels_b`` channels
    with output rows of ``row`` positions, on tensors like ``t``, runs the direct kernel."""
    return t.dtype == torch.float32 and t.device.type == "cpu" and row >= MIN_ROW and \
        max(channels_a, channels_b) <= channel_limit(t.dim() - 2, torch.get_num_threads(), kind(geometry))
