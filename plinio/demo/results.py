"""What a demo run measured: one row for the unsearched seed and one per strength."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .costs import Cost
from .training import EpochResult


@dataclass
class SeedResult:
    """The warmed-up, unsearched supernet (every branch mixed with θ = 1/n)."""

    test_accuracy: float
    val_accuracy: float
    cost: Cost
    # the wrapper's own cost (SPEC §4.3) at the start, in the chosen regularizer's unit
    regularizer_value: float
    warmup: List[EpochResult] = field(default_factory=list)


@dataclass
class StrengthResult:
    """One searched, exported and fine-tuned network."""

    strength: float
    chosen_branches: Dict[str, str]
    test_accuracy: float
    val_accuracy: float
    # validation accuracy of the search model with hard (argmax) branch selection, before
    # export and fine-tuning
    search_val_accuracy: float
    cost: Cost
    # the wrapper's cost (SPEC §4.3) at the end of the search, in the regularizer's unit
    regularizer_value: float
    arch_summary: Dict[str, Any]
    files: Dict[str, str]
    torch_export_max_abs_diff: float
    onnx_max_abs_diff: float
    search: List[EpochResult] = field(default_factory=list)
    finetune: List[EpochResult] = field(default_factory=list)


@dataclass
class DemoResults:
    """Everything ``results.json`` and the final table report."""

    options: Dict[str, Any]
    seed: SeedResult
    rows: List[StrengthResult]
    wall_time_s: float = 0.0
    plot: Optional[str] = None
