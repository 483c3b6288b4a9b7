"""What a demo run measured, per seed: the unsearched supernet, one searched network per
strength and the hand-picked fixed-choice networks."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .costs import Cost
from .training import EpochResult


@dataclass
class UnsearchedResult:
    """The warmed-up, unsearched supernet (every branch mixed with θ = 1/n)."""

    test_accuracy: float
    val_accuracy: float
    cost: Cost
    # the wrapper's own cost (docs/behaviour.md §4.3) at the start, in the regularizer's unit
    regularizer_value: float
    warmup: List[EpochResult] = field(default_factory=list)


@dataclass
class SearchedResult:
    """One searched, exported and fine-tuned network."""

    strength: float
    chosen_branches: Dict[str, str]
    test_accuracy: float
    val_accuracy: float
    # validation accuracy of the search model with hard (argmax) branch selection, before
    # export and fine-tuning
    search_val_accuracy: float
    cost: Cost
    # the wrapper's cost (docs/behaviour.md §4.3) at the end of the search, in the
    # regularizer's unit
    regularizer_value: float
    arch_summary: Dict[str, Any]
    files: Dict[str, str]
    torch_export_max_abs_diff: float
    onnx_max_abs_diff: float
    search: List[EpochResult] = field(default_factory=list)
    finetune: List[EpochResult] = field(default_factory=list)


@dataclass
class FixedResult:
    """A hand-picked network (every block of one kind, all channels kept) trained for the
    same epochs as a searched one."""

    kind: str
    test_accuracy: float
    val_accuracy: float
    cost: Cost
    training: List[EpochResult] = field(default_factory=list)
    finetune: List[EpochResult] = field(default_factory=list)


@dataclass
class SeedRun:
    """Everything measured with one seed (split, initial weights, data order)."""

    seed: int
    unsearched: UnsearchedResult
    searched: List[SearchedResult]
    fixed: List[FixedResult]


@dataclass
class DemoResults:
    """Everything ``results.json`` and the final tables report."""

    options: Dict[str, Any]
    machine: Dict[str, Any]
    runs: List[SeedRun]
    wall_time_s: float = 0.0
    plot: Optional[str] = None
