"""When a compact convolution of sparse execution runs ``plinio::small_conv`` (a direct CPU
convolution for a few channels, ``csrc/cpu/small_conv_cpu.cpp``) instead of aten's.

oneDNN runs a convolution of a few channels at a fraction of its usual speed (a 4 -> 4
channel 5×5 convolution of 32×32 images: ~20 GMAC/s on a core that runs a 64-channel one at
~100), and a heavily pruned layer keeps exactly that few. The direct kernel vectorizes along
the image rows instead of the channels, so its speed does not depend on the channel count;
it supports what such layers use: stride 1, groups 1, any dilation and padding, kernel width
2 to 7, float32, 1-D and 2-D.

The rule below comes from ``bench/bench_small_conv.py`` (forward + both gradients, batch 32,
1 thread; the ranges are in bench/RESULTS.md). With the AVX-512 copy of the loops it is
faster than oneDNN up to 8 input and output channels on rows of 16+ outputs with a kernel
of 3+ taps per row (a 1×1 or 1×2 kernel is a small matrix product, which oneDNN does well);
with the AVX2 copy up to 4 channels; the baseline copy is never used.
"""
import functools

import torch

from plinio import _extension

from .linear_ops import ConvGeometry

MIN_ROW = 16        # output positions per row (shorter rows leave the vectors part empty)
MIN_KERNEL_WIDTH = 3
MAX_KERNEL_WIDTH = 7  # the weight-gradient loops unroll up to this many taps per row
_CHANNEL_LIMIT = {"avx512": 8, "avx2": 4}


@functools.lru_cache(maxsize=None)
def channel_limit() -> int:
    """Most input/output channels at which the direct kernel runs in this process (0: never:
    the extension is not built, predates the kernel, or only its baseline loops run here)."""
    if not _extension.load():
        return 0
    import plinio._C as ext  # loaded by _extension.load()
    isa = getattr(ext, "small_conv_isa", None)
    return _CHANNEL_LIMIT.get(isa(), 0) if isa is not None else 0


def geometry_fits(geometry: ConvGeometry) -> bool:
    """Whether a layer of this geometry can run the direct kernel (its channel counts are
    decided per call, by :func:`runs_direct`)."""
    return geometry.groups == 1 and geometry.ndim in (1, 2) and all(s == 1 for s in geometry.stride) \
        and MIN_KERNEL_WIDTH <= geometry.kernel[-1] <= MAX_KERNEL_WIDTH


def runs_direct(t: torch.Tensor, channels_a: int, channels_b: int, row: int) -> bool:
    """Whether a convolution between ``channels_a`` and ``channels_b`` channels with output
    rows of ``row`` positions, on tensors like ``t``, runs the direct kernel."""
    return t.dtype == torch.float32 and t.device.type == "cpu" and row >= MIN_ROW \
        and max(channels_a, channels_b) <= channel_limit()
