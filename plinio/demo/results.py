"""What a demo run measured, per seed: the unsearched supernet, one searched network per
strength and the hand-picked fixed-choice networks."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

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


def target_tag(targets: Tuple[Tuple[str, float], ...]) -> str:
    """'macs≤200000, peak_memory≤16384': the bounds of a target search."""
    return ", ".join(f"{name}≤{value:g}" for name, value in targets)


@dataclass
class SearchedResult:
    """One searched, exported and fine-tuned network: one per strength, or the one of a
    target search (``strength`` None, ``targets`` the budgets)."""

    strength: Optional[float]
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
    targets: Dict[str, float] = field(default_factory=dict)
    # the searched costs as the search model predicts them for its export (binarized masks,
    # argmax branches) and as measured on the exported network
    predicted: Dict[str, float] = field(default_factory=dict)
    measured: Dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """'strength 0.1' or 'target macs≤200k'."""
        return f"strength {self.strength:g}" if self.strength is not None \
            else f"target {target_tag(tuple(self.targets.items()))}"

    @property
    def tag(self) -> str:
        """The short name on the plot: 'λ=0.1' or 'macs≤200k'."""
        return f"λ={self.strength:g}" if self.strength is not None else target_tag(tuple(self.targets.items()))


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
