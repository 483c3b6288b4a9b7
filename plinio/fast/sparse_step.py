"""Sparse execution of a whole search step: the kept channel sets of every layer, computed
once per step, and the hook through which each masked convolution uses them.

A wrapper holding a :class:`SparseExecution` runs its forward inside
``execution.step()``. That binarizes every channel mask of the model at once — exactly as
``plinio.ops.pit_masked_weight`` does: θ = |α| with the last ``keep_alive`` entries at 1,
kept where θ > threshold, compared in the precision of the op's kernels — and brings the
bits to the host in one transfer (one host synchronisation for all layers together; free on
the CPU). From them it derives, per registered *site* (a layer or a merged supernet
convolution), the kept output rows and the live input channels, and moves all index sets to
the device in one copy. The sets are reused as long as no mask changes.

During the step, a site asks :func:`sparse_call` for its call: None means "run the dense
convolution" (no step active — ``torch.compile`` tracing, autocast on, a channels_last
network input —, the site unknown, or :func:`~plinio.fast.sparse_conv.sparse_pays` says the
compact convolution would not be faster for this input size); otherwise a
:class:`SparseCall` that runs the site's checked plan
(:func:`~plinio.fast.sparse_conv.run_sparse_plan`, the computation of
:func:`~plinio.fast.sparse_conv.sparse_masked_conv`) with the site's flags. The flags come
from ``plinio.graph.zero_gradients`` (which gradients are provably 0 on pruned channels), so
values and gradients are those of the dense path.

Compact execution (:class:`SparseExecution`): the tensors of the compact groups hold only
their kept channels between the layers; a site reading or writing them always runs its plan.
"""
import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import Dict, Hashable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from plinio.graph.channels import Concat, Const, Desc, Flatten, Group

from .linear_ops import ConvGeometry
from .sparse_conv import (ChannelMaskArgs, _CompactKernels, LayerWork, run_sparse_plan, runs_native, select_channels,
                          sparse_pays, sparse_plan)


@dataclass(frozen=True)
class ChannelMask:
    """One channel mask as ``pit_masked_weight`` binarizes it. ``owner.<param>`` holds α
    (read at every step, so a replaced or reloaded parameter is seen); ``param`` None: a
    frozen mask that keeps every channel."""

    owner: nn.Module
    param: Optional[str]
    size: int
    keep_alive: int
    threshold: float

    def values(self) -> torch.Tensor:
        """α as stored now (searched masks only)."""
        return getattr(self.owner, self.param)


@dataclass(frozen=True)
class SparseSite:
    """A masked convolution (``geometry`` None: a Linear on (batch, features) inputs).

    ``kept``: id of the mask whose kept channels are the only non-zero output rows (None:
    every row may be non-zero). ``live``: what the input channels are made of, a channel
    descriptor whose groups are mask ids (channels outside the live set are exactly 0).
    ``grad_pruned_rows`` / ``grad_dead_inputs``: as in ``sparse_masked_conv``.
    ``keep_input``: save the input itself for backward (another op keeps it anyway, or may),
    rather than a gathered copy of its live channels. ``compact_in`` / ``compact_out``: the
    input holds only its live channels / the output only the kept rows (compact execution,
    see :class:`SparseExecution`). ``channels_last``: in a step where some group is compact
    and pruned, a convolution with nothing to skip still runs through its plan, in
    channels_last, so that it hands the compact layers around it their layout (at a few
    channels, oneDNN is several times slower in NCHW or on mixed layouts).
    """

    geometry: Optional[ConvGeometry]
    in_channels: int
    out_channels: int
    kept: Optional[int]
    live: Desc
    grad_pruned_rows: bool
    grad_dead_inputs: bool
    keep_input: bool = True
    compact_in: bool = False
    compact_out: bool = False
    channels_last: bool = False

    def positions(self, x: torch.Tensor, geometry: Optional[ConvGeometry], channels: int) -> Optional[int]:
        """Output positions of one call on ``x`` (batch included), None when ``x`` does not
        have ``channels`` input channels or does not fit the site."""
        if geometry is None:
            if x.dim() < 1 or x.shape[-1] != channels:
                return None
            return math.prod(x.shape[:-1])
        if x.dim() != geometry.ndim + 2 or x.shape[1] != channels:
            return None
        sizes = [(n + off) // s + 1 for n, off, s in zip(x.shape[2:], geometry.size_offset, geometry.stride)]
        return x.shape[0] * math.prod(sizes) if min(sizes) > 0 else None


# rows and columns of a weight (None: all of them)
Block = Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]


class SparseCall:
    """What one site computes in this step: its kept rows and live inputs (device index
    tensors, None: all) and its flags, as a checked plan. Calling it runs the plan
    (``plinio.fast.sparse_conv.run_sparse_plan``)."""

    def __init__(self, site: SparseSite, geometry: Optional[ConvGeometry], kept: Optional[torch.Tensor],
                 live: Optional[torch.Tensor], kept_by: Optional[nn.Module] = None) -> None:
        self.site = site
        self.geometry = geometry
        self.kept = kept
        self.live = live
        self.kept_by = kept_by  # the masker whose kept channels ``kept`` are
        device = kept.device if kept is not None else live.device if live is not None else None
        self.plan = sparse_plan(geometry, site.out_channels, site.in_channels, kept, live,
                                grad_pruned_rows=site.grad_pruned_rows, grad_dead_inputs=site.grad_dead_inputs,
                                device=device, compact_in=site.compact_in, compact_out=site.compact_out,
                                channels_last=site.channels_last)

    def kept_rows(self, like: torch.Tensor) -> torch.Tensor:
        """0./1. vector over the output channels: 1 on the kept rows (``like``'s dtype and device)."""
        out = torch.zeros(self.site.out_channels, dtype=like.dtype, device=like.device)
        return out.fill_(1.0) if self.kept is None else out.index_fill_(0, self.kept, 1.0)

    def weight_block(self) -> Optional[Block]:
        """(rows, columns) of the weight this call reads (None: all of them), or None when it
        needs the whole weight; a caller building its weight from parts may build that block
        only and pass ``compact_weight=True``."""
        return (self.plan.kept, self.plan.forward_in) if self.plan.takes_compact_weight else None

    def takes_mask_of(self, masker: nn.Module, x: torch.Tensor) -> bool:
        """Whether this call may take its layer's unmasked weight with ``masker``'s parameter
        (``mask`` of :meth:`__call__`): a layer the native op runs whole whose kept rows are
        ``masker``'s kept channels."""
        return self.kept is not None and self.kept_by is masker and runs_native(self.plan, x)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 compact_weight: bool = False, mask: Optional[ChannelMaskArgs] = None) -> torch.Tensor:
        """The convolution; the channels of ``x`` it reads are gathered in the layout it runs
        in once per forward for all the convolutions reading them (a supernet's branches).
        ``compact_weight``: ``weight`` and ``bias`` are the block :meth:`weight_block` names.
        ``mask`` (where :meth:`takes_mask_of`): ``weight`` and ``bias`` are unmasked, and the
        mask parameter gets its gradient from the convolution
        (``plinio.fast.sparse_conv.run_sparse_plan``)."""
        gathered = None if self.site.compact_in else _shared_gather(x, self.plan.forward_in, self.plan.kernels)
        return run_sparse_plan(self.plan, x, weight, bias, keep_full_input=self.site.keep_input,
                               gathered_input=gathered, compact_weight=compact_weight, mask=mask)


class _SiteSets:
    """A site's index sets of the current masks, and its decisions per input size."""

    def __init__(self, site: SparseSite, kept: Optional[torch.Tensor], live: Optional[torch.Tensor],
                 n_kept: int, n_live: int, kept_by: Optional[nn.Module] = None) -> None:
        self.site = site
        self.kept_by = kept_by
        self.kept = kept
        self.live = live
        self.n_kept = n_kept
        self.n_live = n_live
        self.channels_last = False  # site.channels_last, in a step with compact work
        self._calls: Dict[Tuple[Tuple[int, ...], Optional[ConvGeometry], bool, bool], Optional[SparseCall]] = {}

    def call_for(self, x: torch.Tensor, weight_grad: bool, geometry: Optional[ConvGeometry]
                 ) -> Optional[SparseCall]:
        backward = torch.is_grad_enabled() and weight_grad
        input_grad = backward and x.requires_grad
        key = (tuple(x.shape), geometry, backward, input_grad)
        if key not in self._calls:
            self._calls[key] = self._decide(x, geometry, backward, input_grad)
        return self._calls[key]

    def _decide(self, x: torch.Tensor, geometry: Optional[ConvGeometry], backward: bool,
                input_grad: bool) -> Optional[SparseCall]:
        site = self.site
        if self.kept is None and self.live is None:  # nothing to skip
            if self.channels_last and site.positions(x, geometry, site.in_channels) is not None:
                return SparseCall(site, geometry, None, None)
            return None
        compact_in = site.compact_in and self.live is not None
        compact = compact_in or site.compact_out and self.kept is not None
        depthwise = geometry is not None and geometry.groups > 1
        channels = (self.n_kept if depthwise else self.n_live) if compact_in else site.in_channels
        positions = site.positions(x, geometry, channels)
        if positions is None:
            if compact:
                raise RuntimeError(f"plinio sparse execution: a compact layer of {site.in_channels} input channels "
                                   f"({channels} live in this step) received an input of shape {tuple(x.shape)}; "
                                   "build the wrapper with sparse=False (or set `.sparse = False`) for this model")
            return None
        if compact:  # its input or its output holds only the live / kept channels: it must run compact
            return SparseCall(site, geometry, self.kept, self.live, self.kept_by)
        work = LayerWork(geometry, site.in_channels, site.out_channels, positions, backward, input_grad)
        if not sparse_pays(work, self.n_kept, self.n_live, site.grad_pruned_rows, site.grad_dead_inputs):
            return None
        return SparseCall(site, geometry, self.kept, self.live, self.kept_by)


def _live_indices(desc: Desc, kept: Mapping[int, Optional[np.ndarray]], sizes: Mapping[int, int]
                  ) -> Tuple[Optional[np.ndarray], int]:
    """(live channel indices or None when every channel may be live, channel count)."""
    if isinstance(desc, Const):
        return None, desc.n
    if isinstance(desc, Group):
        size = sizes.get(desc.gid)
        if size is None:
            raise ValueError(f"plinio.fast.sparse_step: no channel mask for group {desc.gid}")
        return kept.get(desc.gid), size
    if isinstance(desc, Flatten):
        inner, size = _live_indices(desc.inner, kept, sizes)
        if inner is None:
            return None, size * desc.factor
        return (inner[:, None] * desc.factor + np.arange(desc.factor)).reshape(-1), size * desc.factor
    if isinstance(desc, Concat):
        parts, offset, complete = [], 0, True
        for part in desc.parts:
            idx, size = _live_indices(part, kept, sizes)
            complete = complete and idx is None
            parts.append((np.arange(size) if idx is None else idx) + offset)
            offset += size
        return (None if complete else np.concatenate(parts)), offset
    raise TypeError(f"plinio.fast.sparse_step: unknown channel descriptor {desc!r}")


class _Step:
    """The index sets of every site for one set of mask bits."""

    def __init__(self, execution: "SparseExecution", bits: np.ndarray, device: torch.device) -> None:
        kept: Dict[int, Optional[np.ndarray]] = {}
        for mid, (start, size) in execution.slices.items():
            on = np.flatnonzero(bits[start:start + size])
            kept[mid] = None if on.size == size else on
        sizes = {mid: mask.size for mid, mask in execution.masks.items()}
        host: List[Tuple[Hashable, SparseSite, Optional[np.ndarray], int, Optional[np.ndarray], int]] = []
        for key, site in execution.sites.items():
            k_idx = kept.get(site.kept) if site.kept is not None else None
            n_kept = site.out_channels if k_idx is None else k_idx.size
            l_idx, n_in = _live_indices(site.live, kept, sizes)
            if n_in != site.in_channels:
                raise ValueError(f"plinio.fast.sparse_step: the input of a site has {site.in_channels} channels but "
                                 f"its descriptor {site.live!r} describes {n_in}")
            n_live = site.in_channels if l_idx is None else l_idx.size
            host.append((key, site, k_idx, n_kept, l_idx, n_live))
        compact = [(gid, kept.get(gid)) for gid in execution.compact_groups]
        arrays = [a for entry in host for a in (entry[2], entry[4]) if a is not None]
        arrays += [idx for _, idx in compact if idx is not None]
        packed = _to_device(np.concatenate(arrays) if arrays else np.zeros(0, np.int64), device)
        self.sites: Dict[Hashable, _SiteSets] = {}
        offset = 0
        for key, site, k_idx, n_kept, l_idx, n_live in host:
            views = []
            for idx in (k_idx, l_idx):
                views.append(None if idx is None else packed[offset:offset + idx.size])
                offset += 0 if idx is None else idx.size
            kept_by = execution.masks[site.kept].owner if site.kept is not None else None
            self.sites[key] = _SiteSets(site, views[0], views[1], n_kept, n_live, kept_by)
        # the kept channels a compact tensor of each compact group holds (None: all)
        self.compact: Dict[int, Optional[torch.Tensor]] = {}
        for gid, idx in compact:
            self.compact[gid] = None if idx is None else packed[offset:offset + idx.size]
            offset += 0 if idx is None else idx.size
        if any(idx is not None for idx in self.compact.values()):
            for sets in self.sites.values():
                sets.channels_last = sets.site.channels_last


def _to_device(indices: np.ndarray, device: torch.device) -> torch.Tensor:
    """One int64 tensor on ``device`` (pinned and non-blocking for CUDA: no host sync)."""
    tensor = torch.from_numpy(indices.astype(np.int64, copy=False))
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


# The device types whose steps run sparse. On CUDA, sparse steps ran slower than dense ones in
# every case measured (one H200, batch 128, the five benchmark workloads at 0, 50 and 75 %
# pruned: 1.03-1.39x the dense step, `bench/RESULTS.md`): those steps are bound by kernel
# launches, not by the arithmetic pruning saves, and sparse execution adds gathers, scatters
# and one host synchronisation per step. There the dense path runs; the CUDA sparse path
# stays exact and tested, for a caller that adds "cuda" here.
SPARSE_DEVICE_TYPES = frozenset({"cpu"})

_ACTIVE: contextvars.ContextVar[Optional[_Step]] = contextvars.ContextVar("plinio_sparse_step", default=None)
# the input copies gathered during the current forward: (id of x, its version, id of the index
# set or None, the kernels' layout) -> (x, copy); x is held so that its id is not reused while
# the entry lives
_GatherKey = Tuple[int, int, Optional[int], Hashable]
_GATHERED: contextvars.ContextVar[Optional[Dict[_GatherKey, Tuple[torch.Tensor, torch.Tensor]]]] = \
    contextvars.ContextVar("plinio_sparse_gathered", default=None)


def _shared_gather(x: torch.Tensor, index: Optional[torch.Tensor], kernels: _CompactKernels) -> torch.Tensor:
    """``x`` restricted to the channels ``index`` (None: all) in the layout ``kernels`` run in,
    without autograd, one copy per input, index set and layout in a forward (a supernet's
    branches read the same input: each would otherwise copy it to channels_last)."""
    # an inference-mode tensor has no version counter to tell an in-place change: not shared
    cache = None if x.is_inference() else _GATHERED.get()
    if cache is None:
        return _gather(x, index, kernels)
    key = (id(x), x._version, None if index is None else id(index), kernels.layout_key)
    if key not in cache:
        cache[key] = (x, _gather(x, index, kernels))
    return cache[key][1]


def _gather(x: torch.Tensor, index: Optional[torch.Tensor], kernels: _CompactKernels) -> torch.Tensor:
    with torch.no_grad():
        return kernels.layout(select_channels(x, kernels.channel_dim, index))


class SparseExecution:
    """The sparse-execution state of one model: its channel masks (by id) and its sites
    (keyed by the object that runs them: a layer, a supernet's combiner). Holds no
    parameter; the wrappers keep it outside the module tree.

    ``assumptions``: (object, attribute, value) triples the masks and flags were derived
    from (the layers' binarization thresholds); a step in which one no longer holds runs
    dense, and so does a step under autocast.

    Compact execution: every tensor of a group in ``compact_groups`` holds only the kept
    channels of the group's mask in a step (shape (N, |K|, ...)), so that every op between
    the layers (activations, the supernet combine, pooling, adds) shrinks with the pruning
    too; the sites with ``compact_in`` / ``compact_out`` read and write such tensors, and
    ``runner`` (when given) is the graph to run in a step: the model's graph with the ops
    that need the step's channel sets (dropout: :func:`compact_channels`) in place. Which
    groups may be compact (values on their pruned channels exactly 0, gradients there
    exactly 0 or reaching nothing) is decided by the builder of the sites."""

    def __init__(self, masks: Mapping[int, ChannelMask], sites: Mapping[Hashable, SparseSite],
                 assumptions: Sequence[Tuple[object, str, object]] = (), compact_groups: Sequence[int] = (),
                 runner: Optional[nn.Module] = None) -> None:
        self.masks = dict(masks)
        self.sites = dict(sites)
        self.assumptions = tuple(assumptions)
        unknown = [gid for gid in compact_groups if gid not in self.masks or self.masks[gid].param is None]
        if unknown:
            raise ValueError(f"plinio.fast.sparse_step: compact groups {unknown} have no searched channel mask")
        self.compact_groups = tuple(sorted(compact_groups))
        self.runner = runner
        searched = [mid for mid, m in sorted(self.masks.items()) if m.param is not None]
        self.slices: Dict[int, Tuple[int, int]] = {}
        start = 0
        for mid in searched:
            self.slices[mid] = (start, self.masks[mid].size)
            start += self.masks[mid].size
        self._searched = searched
        self._constants: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._last: Optional[Tuple[bytes, torch.device, _Step]] = None

    def _bits(self) -> Tuple[np.ndarray, torch.device]:
        """Every searched mask binarized, concatenated, on the host (one transfer)."""
        values = [self.masks[mid].values().detach() for mid in self._searched]
        if not values:
            return np.zeros(0, dtype=bool), torch.device("cpu")
        device = values[0].device
        keep, thresholds = self._constants_on(device)
        with torch.no_grad():
            theta = torch.cat([v.to(torch.float64) for v in values]).abs_()
            theta.masked_fill_(keep, 1.0)
            bits = (theta > thresholds).cpu().numpy()
        return bits, device

    def _constants_on(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keep-alive flags and thresholds (as the kernels compare them: in the parameters'
        accumulation precision, float32 below float64) of the concatenated masks."""
        if device not in self._constants:
            keep, thresholds = [], []
            for mid in self._searched:
                mask = self.masks[mid]
                flags = np.zeros(mask.size, dtype=bool)
                if mask.keep_alive > 0:
                    flags[-mask.keep_alive:] = True
                keep.append(flags)
                precision = np.float64 if mask.values().dtype == torch.float64 else np.float32
                thresholds.append(np.full(mask.size, precision(mask.threshold), dtype=np.float64))
            self._constants[device] = (torch.from_numpy(np.concatenate(keep)).to(device),
                                          torch.from_numpy(np.concatenate(thresholds)).to(device))
        return self._constants[device]

    def _runs_dense(self, inputs: Sequence[object]) -> bool:
        """A threshold changed since the sites were built, the model is on a device where
        sparse steps do not pay (:data:`SPARSE_DEVICE_TYPES`), autocast is on (the compact
        convolutions would not cast), or a network input is channels_last (compact dropout
        draws its noise for the contiguous tensors of a contiguous input)."""
        if any(getattr(owner, name) != value for owner, name, value in self.assumptions):
            return True
        if any(isinstance(t, torch.Tensor) and t.dim() == 4 and not t.is_contiguous()
               and t.is_contiguous(memory_format=torch.channels_last) for t in inputs):
            return True
        device = self.device_type
        return device not in SPARSE_DEVICE_TYPES or torch.is_autocast_enabled(device)

    @property
    def device_type(self) -> str:
        """The device type the model's masks are on, where its steps run."""
        return self.masks[self._searched[0]].values().device.type if self._searched else "cpu"

    def off_device_reason(self) -> str:
        """Why this model's steps run dense on its device, or '' where they may run sparse."""
        device = self.device_type
        if device in SPARSE_DEVICE_TYPES:
            return ""
        return (f"the model is on {device}, where steps run dense (measured slower there; "
                "plinio.fast.sparse_step.SPARSE_DEVICE_TYPES lists the device types that run sparse)")

    @contextlib.contextmanager
    def step(self, inputs: Sequence[object] = ()) -> Iterator[None]:
        """Within this context the sites run sparse where it pays and the compact groups
        run compact (see the module docstring and the class docstring); ``inputs``: the
        network's inputs of the step."""
        if self._runs_dense(inputs):
            yield
            return
        bits, device = self._bits()
        key = bits.tobytes()
        if self._last is not None and self._last[0] == key and self._last[1] == device:
            current = self._last[2]
        else:
            current = _Step(self, bits, device)
            self._last = (key, device, current)
        token, gathered = _ACTIVE.set(current), _GATHERED.set({})
        try:
            yield
        finally:
            _ACTIVE.reset(token)
            _GATHERED.reset(gathered)


def sparse_call(owner: Hashable, x: torch.Tensor, weight_grad: bool, geometry: Optional[ConvGeometry] = None
                ) -> Optional[SparseCall]:
    """The sparse computation of ``owner``'s convolution of ``x`` in the current step, or
    None: run the dense one. ``weight_grad``: whether the weight it convolves with requires
    a gradient (the decision counts the backward convolutions). ``geometry``: the
    convolution actually run (a layer that absorbed a padding), default the site's own."""
    if torch.compiler.is_compiling():
        return None
    current = _ACTIVE.get()
    if current is None:
        return None
    sets = current.sites.get(owner)
    if sets is None:
        return None
    if sets.kept is not None and sets.kept.device != x.device or \
            sets.live is not None and sets.live.device != x.device:
        if sets.site.compact_in or sets.site.compact_out:
            raise RuntimeError(f"plinio sparse execution: a compact layer received an input on {x.device}, its "
                               "channel masks are on another device; move the whole model to one device or "
                               "build the wrapper with sparse=False")
        return None
    return sets.call_for(x, weight_grad, sets.site.geometry if geometry is None else geometry)


def in_sparse_step() -> bool:
    """Whether a sparse step is running (its tensors may be in the compact layout even where
    they hold every channel)."""
    return _ACTIVE.get() is not None


def compact_channels(gid: int) -> Optional[torch.Tensor]:
    """The kept channels a tensor of group ``gid`` holds in the current step (device indices),
    or None: it holds every channel (no compact step, the group is not compact, or nothing
    of it is pruned)."""
    current = _ACTIVE.get()
    return None if current is None else current.compact.get(gid)

