"""Options of one demo run and the error type for user-facing failures."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Tuple

DEFAULT_OUT = Path("plinio-demo-out")
DEFAULT_STRENGTHS_MACS: Tuple[float, ...] = (0.01, 0.1, 1.0)
DEFAULT_STRENGTHS_SIZE: Tuple[float, ...] = (0.01, 0.1, 1.0)
QUICK_STRENGTHS: Tuple[float, ...] = (0.1, 1.0)
# the whole run is repeated per seed and reported as ranges: results differ between CPUs
# (floating-point rounding steers the search), the spread over seeds shows by how much
DEFAULT_SEEDS: Tuple[int, ...] = (0, 1, 2)
QUICK_SEEDS: Tuple[int, ...] = (0,)
# costs the search can reduce (--regularizer) or bound (--target); peak_memory in bytes
REGULARIZERS: Tuple[str, ...] = ("macs", "size", "peak_memory")


class DemoError(Exception):
    """A failure the user can act on: printed as one line, never as a traceback.

    ``exit_code`` is 2 for bad options (as argparse does) and 1 for a failed check during
    the run (for example an ONNX model that does not reproduce PyTorch's outputs).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Schedule:
    """Epoch counts and learning rates of the three training phases."""

    warmup_epochs: int = 4
    search_epochs: int = 5
    finetune_epochs: int = 4
    batch_size: int = 64
    net_lr: float = 3e-3
    nas_lr: float = 3e-2
    finetune_lr: float = 2e-3
    # softmax temperature of the supernets: annealed geometrically over the search epochs
    initial_temperature: float = 1.0
    final_temperature: float = 0.2


@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines a demo run (validated by ``plinio.demo.cli``)."""

    out: Path = DEFAULT_OUT
    device: str = "cpu"
    regularizer: str = "macs"
    strengths: Tuple[float, ...] = DEFAULT_STRENGTHS_MACS
    seeds: Tuple[int, ...] = DEFAULT_SEEDS
    fast: bool = True
    progress: bool = True
    schedule: Schedule = field(default_factory=Schedule)
    # (cost, budget) pairs: one search that keeps every cost under its budget instead of one
    # search per strength (README "Costs and budgets")
    targets: Tuple[Tuple[str, float], ...] = ()
