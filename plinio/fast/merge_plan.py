"""The merge planner: which branches of one supernet fold exactly into one convolution.

Input: for every branch either its geometry as one convolution of the shared input
(:class:`LinearCandidate`), ``IDENTITY``, or the reason it is not linear. Output: a
:class:`MergePlan` naming the merged branches, the geometry of the merged convolution and where
each branch's kernel sits inside the merged kernel.

Exactness (all proved from hyper-parameters):
* same spatial dimensionality, input and output channels, groups and stride;
* the same output length for *every* input length: ``p_l + p_r − extent`` equal for all;
* the tap offsets of each branch relative to the output anchor ``s·o`` are then comparable:
  branch tap ``t`` reads ``x[s·o + d·t − p_l]``, so its kernel is placed at offset
  ``d·t − p_l`` of a common kernel (dilation becomes zero taps, smaller kernels zero rings);
* Identity is the Dirac kernel at offset 0 (needs in == out channels, stride 1, same size).
Among the compatible branches the planner keeps the subset whose merged convolution is
cheaper than computing them separately (a cost estimate, not an exactness question).
"""
import math
from dataclasses import dataclass, field
from functools import reduce
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .linear_ops import ConvGeometry, Ints, identity_geometry

# Cost, in multiply-accumulates per output element, of feeding one more branch output to the
# weighted sum (a memory-bound pass forward and backward, far dearer than one MAC).
COMBINE_MACS_PER_ELEMENT = 64


@dataclass(frozen=True)
class LinearCandidate:
    """A branch that is one convolution of the shared input (possibly a composed chain)."""

    geometry: ConvGeometry
    separate_macs: int  # MACs per output position when the branch runs on its own


class _Identity:
    """Marker of an identity branch (its geometry comes from the branches it merges with)."""

    def __repr__(self) -> str:
        return "IDENTITY"


IDENTITY = _Identity()
Candidate = Union[LinearCandidate, _Identity, str]


@dataclass(frozen=True)
class MemberPlacement:
    """Where one merged branch's kernel sits in the merged kernel."""

    branch: int
    geometry: ConvGeometry  # the branch's own geometry (identity resolved to a Dirac conv)
    is_identity: bool
    start: Ints  # merged-kernel index of the branch's tap 0, per spatial dim
    step: Ints   # merged-kernel index distance between consecutive taps of the branch


@dataclass(frozen=True)
class MergePlan:
    """The result of planning one supernet."""

    n_branches: int
    members: Tuple[MemberPlacement, ...] = ()
    geometry: Optional[ConvGeometry] = None  # the merged convolution
    reasons: Dict[int, str] = field(default_factory=dict)  # why a branch stays separate

    @property
    def merged(self) -> Tuple[int, ...]:
        """Indices of the branches folded into the merged convolution."""
        return tuple(m.branch for m in self.members)

    @property
    def separate(self) -> Tuple[int, ...]:
        """Indices of the branches computed on their own and summed with ``combine``."""
        merged = set(self.merged)
        return tuple(i for i in range(self.n_branches) if i not in merged)


def _compat_key(g: ConvGeometry) -> Tuple:
    return (g.ndim, g.in_channels, g.out_channels, g.groups, g.stride, g.size_offset)


def _identity_fits(key: Tuple) -> bool:
    ndim, cin, cout, _groups, stride, offset = key
    return cin == cout and all(s == 1 for s in stride) and offset == (-1,) * ndim


def _tap_offsets(g: ConvGeometry, dim: int) -> List[int]:
    return [g.dilation[dim] * t - g.pad_left[dim] for t in range(g.kernel[dim])]


def merged_geometry(geometries: Sequence[ConvGeometry]) -> Tuple[ConvGeometry, List[Ints],
                                                                     List[Ints]]:
    """Geometry of the convolution whose kernel holds every given kernel at its tap offsets,
    plus each kernel's start index and step in it. All geometries must be compatible."""
    first = geometries[0]
    ndim = first.ndim
    kernel, dilation, pad_left, pad_right = [], [], [], []
    starts: List[List[int]] = [[] for _ in geometries]
    steps: List[List[int]] = [[] for _ in geometries]
    for dim in range(ndim):
        offsets = sorted({r for g in geometries for r in _tap_offsets(g, dim)})
        low, high = offsets[0], offsets[-1]
        spacing = reduce(math.gcd, (r - low for r in offsets), 0) or 1
        taps = (high - low) // spacing + 1
        extent = high - low + 1
        kernel.append(taps)
        dilation.append(spacing)
        pad_left.append(-low)
        # same output length as the members: p_l + p_r − extent equals their size offset
        pad_right.append(first.size_offset[dim] + extent + low)
        for i, g in enumerate(geometries):
            starts[i].append((-g.pad_left[dim] - low) // spacing)
            steps[i].append(g.dilation[dim] // spacing if g.kernel[dim] > 1 else 1)
    geometry = ConvGeometry(
        ndim=ndim, in_channels=first.in_channels, out_channels=first.out_channels,
        groups=first.groups, kernel=tuple(kernel), stride=first.stride,
        dilation=tuple(dilation), pad_left=tuple(pad_left), pad_right=tuple(pad_right),
        has_bias=any(g.has_bias for g in geometries))
    return geometry, [tuple(s) for s in starts], [tuple(s) for s in steps]


def _plan_cost(chosen: Sequence[int], pool: Sequence[int], geoms: Dict[int, ConvGeometry],
               separate_macs: Dict[int, int], out_channels: int) -> int:
    per_branch = COMBINE_MACS_PER_ELEMENT * out_channels
    rest = [i for i in pool if i not in chosen]
    cost = sum(separate_macs[i] + per_branch for i in rest)
    if chosen:
        geometry = merged_geometry([geoms[i] for i in chosen])[0]
        cost += geometry.macs_per_output_position() + per_branch
    return cost


def _select(pool: List[int], geoms: Dict[int, ConvGeometry], separate_macs: Dict[int, int],
            identities: Sequence[int], out_channels: int) -> List[int]:
    """Greedy removal of members while that lowers the estimated cost."""
    chosen = list(pool)
    best = _plan_cost(chosen, pool, geoms, separate_macs, out_channels)
    while len(chosen) > 1:
        trials = [([j for j in chosen if j != i], i) for i in chosen]
        scored = [(_plan_cost(c, pool, geoms, separate_macs, out_channels), i, c)
                  for c, i in trials]
        cost, _, candidate = min(scored, key=lambda t: (t[0], -t[1]))
        if cost >= best:
            break
        best, chosen = cost, candidate
    if len(chosen) < 2 or all(i in identities for i in chosen):
        return []
    return chosen


def plan_merge(candidates: Sequence[Candidate]) -> MergePlan:
    """Plan one supernet: ``candidates[i]`` describes branch i (see module docstring)."""
    n = len(candidates)
    reasons: Dict[int, str] = {}
    groups: Dict[Tuple, List[int]] = {}
    identities = [i for i, c in enumerate(candidates) if c is IDENTITY]
    for i, cand in enumerate(candidates):
        if isinstance(cand, str):
            reasons[i] = cand
        elif isinstance(cand, LinearCandidate):
            groups.setdefault(_compat_key(cand.geometry), []).append(i)
    best: Tuple[int, List[int], Dict[int, ConvGeometry], Tuple] = (0, [], {}, ())
    for key, convs in groups.items():
        geoms = {i: candidates[i].geometry for i in convs}
        separate_macs = {i: candidates[i].separate_macs for i in convs}
        pool = list(convs)
        if _identity_fits(key):
            ndim, channels, _, grp, _, _ = key
            for i in identities:
                geoms[i] = identity_geometry(ndim, channels, grp)
                separate_macs[i] = 0
                pool.append(i)
        pool.sort()
        chosen = _select(pool, geoms, separate_macs, identities, key[2])
        if not chosen:
            continue
        saving = _plan_cost([], pool, geoms, separate_macs, key[2]) \
            - _plan_cost(chosen, pool, geoms, separate_macs, key[2])
        if saving > best[0]:
            best = (saving, chosen, geoms, key)
    _, chosen, geoms, best_key = best
    for i, cand in enumerate(candidates):
        if i in chosen or i in reasons:
            continue
        if cand is IDENTITY:
            reasons[i] = ("identity: no convolution it can merge with (needs equal in/out "
                          "channels, stride 1 and unchanged size)") if not chosen else \
                "identity: merging it would not pay off"
        elif best_key and _compat_key(cand.geometry) != best_key:
            reasons[i] = "conv: channels, groups, stride or output size differ from the merged ones"
        else:
            reasons[i] = "conv: merging it would cost more than computing it on its own"
    if not chosen:
        return MergePlan(n_branches=n, reasons=reasons)
    chosen = sorted(chosen)
    geometry, starts, steps = merged_geometry([geoms[i] for i in chosen])
    members = tuple(MemberPlacement(branch=i, geometry=geoms[i], is_identity=i in identities,
                                    start=s, step=st)
                    for i, s, st in zip(chosen, starts, steps))
    return MergePlan(n_branches=n, members=members, geometry=geometry, reasons=reasons)
