"""Channel descriptors: what the channel dimension (dim 1) of a tensor in the graph is made of.

- ``Const(n)``: n channels whose width cannot change (network input, frozen paths).
- ``Group(gid)``: the output channels of a channel group (one masker, shared by every producer
  merged into the group).
- ``Concat(parts)``: channel concatenation.
- ``Flatten(inner, factor)``: flatten from dim 1, each channel becomes ``factor`` features.

Groups live in a union-find (``Groups``) that also records which groups must stay frozen.
"""
from dataclasses import dataclass
from typing import Dict, Iterator, Set, Tuple, Union


@dataclass(frozen=True)
class Const:
    n: int


@dataclass(frozen=True)
class Group:
    gid: int


@dataclass(frozen=True)
class Concat:
    parts: Tuple["Desc", ...]


@dataclass(frozen=True)
class Flatten:
    inner: "Desc"
    factor: int


Desc = Union[Const, Group, Concat, Flatten]


class Groups:
    """Union-find over channel groups with a size and a frozen flag per group."""

    def __init__(self) -> None:
        self._parent: Dict[int, int] = {}
        self._size: Dict[int, int] = {}
        self._frozen: Set[int] = set()

    def new(self, size: int, frozen: bool = False) -> Group:
        gid = len(self._parent)
        self._parent[gid] = gid
        self._size[gid] = size
        if frozen:
            self._frozen.add(gid)
        return Group(gid)

    def find(self, gid: int) -> int:
        root = gid
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[gid] != root:
            self._parent[gid], gid = root, self._parent[gid]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] != self._size[rb]:
            raise ValueError(f"cannot share a channel mask between {self._size[ra]} and {self._size[rb]} channels")
        keep, drop = min(ra, rb), max(ra, rb)
        self._parent[drop] = keep
        if drop in self._frozen:
            self._frozen.add(keep)
        return keep

    def size(self, gid: int) -> int:
        return self._size[self.find(gid)]

    def freeze(self, gid: int) -> None:
        self._frozen.add(self.find(gid))

    def is_frozen(self, gid: int) -> bool:
        return self.find(gid) in self._frozen

    def roots(self) -> Iterator[int]:
        return iter(sorted({self.find(g) for g in self._parent}))


def desc_size(desc: Desc, groups: Groups) -> int:
    """Number of channels a descriptor stands for."""
    if isinstance(desc, Const):
        return desc.n
    if isinstance(desc, Group):
        return groups.size(desc.gid)
    if isinstance(desc, Concat):
        return sum(desc_size(p, groups) for p in desc.parts)
    return desc_size(desc.inner, groups) * desc.factor


def desc_groups(desc: Desc) -> Iterator[int]:
    """Every group id a descriptor reads."""
    if isinstance(desc, Group):
        yield desc.gid
    elif isinstance(desc, Concat):
        for p in desc.parts:
            yield from desc_groups(p)
    elif isinstance(desc, Flatten):
        yield from desc_groups(desc.inner)


def canonical(desc: Desc, groups: Groups) -> Desc:
    """The descriptor with every group replaced by its union-find root."""
    if isinstance(desc, Group):
        return Group(groups.find(desc.gid))
    if isinstance(desc, Concat):
        return Concat(tuple(canonical(p, groups) for p in desc.parts))
    if isinstance(desc, Flatten):
        return Flatten(canonical(desc.inner, groups), desc.factor)
    return desc


def freeze(desc: Desc, groups: Groups) -> Const:
    """Freeze every group in ``desc``; its channels then behave as a constant width."""
    for gid in desc_groups(desc):
        groups.freeze(gid)
    return Const(desc_size(desc, groups))


def merge(a: Desc, b: Desc, groups: Groups) -> Desc:
    """Descriptor of tensors whose channels must carry the same mask (add, sub, combiner).

    Groups are unified; concatenations / flattens of the same structure merge part by part;
    anything else (a constant width, different structures) freezes both sides.
    """
    if isinstance(a, Group) and isinstance(b, Group) and groups.size(a.gid) == groups.size(b.gid):
        return Group(groups.union(a.gid, b.gid))
    if isinstance(a, Concat) and isinstance(b, Concat) and len(a.parts) == len(b.parts) and all(
            desc_size(x, groups) == desc_size(y, groups) for x, y in zip(a.parts, b.parts)):
        return Concat(tuple(merge(x, y, groups) for x, y in zip(a.parts, b.parts)))
    if isinstance(a, Flatten) and isinstance(b, Flatten) and a.factor == b.factor:
        return Flatten(merge(a.inner, b.inner, groups), a.factor)
    if a == b:
        return a
    size = max(desc_size(a, groups), desc_size(b, groups))
    freeze(a, groups)
    freeze(b, groups)
    return Const(size)
