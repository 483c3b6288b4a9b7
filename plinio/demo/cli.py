"""Command line of the demo: options → validated ``DemoConfig`` → run → table.

Every user mistake ends as one line ``plinio-demo: error: ...`` on stderr and a non-zero
exit code (2 for bad options, 1 for a failed check during the run), never a traceback.
"""
import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Callable, List, NoReturn, Optional, Sequence, Tuple, TypeVar, Union

import torch

from .config import (DEFAULT_OUT, DEFAULT_SEEDS, DEFAULT_STRENGTHS_MACS, DEFAULT_STRENGTHS_SIZE,
                     QUICK_SEEDS, QUICK_STRENGTHS, REGULARIZERS, DemoConfig, DemoError, Schedule)
from .extras import missing_demo_package

PROG = "plinio-demo"
QUICK_SCHEDULE = Schedule(warmup_epochs=1, search_epochs=1, finetune_epochs=1)
# measured on the README's machine; the README section "What the demo shows" has the details
DEFAULT_TIMING = ("about 75 s of CPU time on one thread of a 2-core AMD EPYC VM; on cores "
                  "busy with other jobs the wall time is several times longer, and "
                  "OMP_NUM_THREADS=1 is faster there than two threads")
QUICK_TIMING = "about 12 s of CPU time on one thread of the same VM"
T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become a one-line ``DemoError`` instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise DemoError(f"{message} (see {self.prog} --help)")


def _comma_list(text: str, parse: Callable[[str], T]) -> List[T]:
    """One list-valued argument: a value or comma-separated values, each read by ``parse``."""
    values = [parse(item.strip()) for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} contains no value")
    return values


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"{text} is not allowed: strengths must be finite and >= 0")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seed(text: str) -> int:
    value = _non_negative_int(text)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"{value} is too large; use 0 <= seed < 2**32")
    return value


_SUFFIXES = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def _target(text: str) -> Tuple[str, float]:
    """``NAME=VALUE``: a cost of ``REGULARIZERS`` and a positive budget (suffix k, M, G)."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or name not in REGULARIZERS:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=VALUE with NAME one of "
                                         f"{', '.join(REGULARIZERS)} (e.g. macs=200k)")
    scale = _SUFFIXES.get(value[-1:], 1.0)
    number = value[:-1] if value[-1:] in _SUFFIXES else value
    try:
        budget = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    if not math.isfinite(budget) or budget <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a budget must be finite and > 0")
    return name, budget


def _strength_list(text: str) -> List[float]:
    return _comma_list(text, _strength)


def _seed_list(text: str) -> List[int]:
    return _comma_list(text, _seed)


def _joined(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _once_each(option: str, values: Sequence[Union[float, str]]) -> None:
    repeated = sorted({v if isinstance(v, str) else f"{v:g}" for v in values if values.count(v) > 1})
    if repeated:
        raise DemoError(f"{option}: {', '.join(repeated)} given more than once; list each "
                        "value once")


def build_parser() -> argparse.ArgumentParser:
    """The demo's argument parser (exposed so that its help text can be tested)."""
    parser = _Parser(
        prog=PROG,
        description="PIT-SuperNet search of a small CNN on scikit-learn's handwritten digits: "
                    "warm-up, search for each regularization strength, export, fine-tune, "
                    "evaluate, next to hand-picked fixed-choice networks trained for the same "
                    "epochs; repeated per seed. Writes a Pareto plot, results.json, "
                    f"torch.export and ONNX files. Default run: {DEFAULT_TIMING}.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where to train (default: %(default)s)")
    parser.add_argument("--regularizer", default="macs", choices=REGULARIZERS,
                        help="cost to reduce: MACs, number of parameters or peak activation "
                             "memory in bytes (default: macs)")
    parser.add_argument("--target", type=_target, action="append", metavar="NAME=VALUE",
                        help="bound a cost instead of tuning a strength: one search keeps "
                             f"NAME ({', '.join(REGULARIZERS)}) under VALUE (suffix k, M: "
                             "macs=200k, peak_memory=16k); repeat it to bound several costs "
                             "at once; replaces --strengths")
    parser.add_argument("--strengths", type=_strength_list, nargs="+", metavar="S",
                        help="regularization strengths, space or comma separated; the cost "
                             "is normalized by the unsearched network's, so 1.0 means 'the "
                             "whole cost is worth one nat of loss' (default: "
                             f"{_joined(DEFAULT_STRENGTHS_MACS)}; with --quick "
                             f"{_joined(QUICK_STRENGTHS)})")
    parser.add_argument("--epochs", type=_positive_int, metavar="N",
                        help=f"search epochs per strength (default: {Schedule.search_epochs})")
    parser.add_argument("--warmup-epochs", type=_non_negative_int, metavar="N",
                        help=f"warm-up epochs (default: {Schedule.warmup_epochs})")
    parser.add_argument("--finetune-epochs", type=_non_negative_int, metavar="N",
                        help=f"fine-tune epochs per exported network "
                             f"(default: {Schedule.finetune_epochs})")
    parser.add_argument("--seeds", "--seed", type=_seed_list, nargs="+", metavar="N",
                        help="seeds of the split, the initial weights and the data order, "
                             "space or comma separated; the whole run is repeated per seed "
                             "and the table reports ranges over them. A run on the CPU is "
                             "repeatable on the same machine (default: "
                             f"{_joined(DEFAULT_SEEDS)}; with --quick {_joined(QUICK_SEEDS)})")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                        help="use plinio's exact fast paths (--no-fast: the reference "
                             "PyTorch path: the same functions up to float rounding, "
                             "slower)")
    parser.add_argument("--quick", action="store_true",
                        help="one epoch per phase, one seed and two strengths: a smoke test "
                             f"({QUICK_TIMING})")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bars")
    return parser


def _check_output_folder(out: Path) -> None:
    """Create ``out`` if needed and prove that a file can be written in it."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out} exists and is not a folder; choose another path")
    probe = out / ".plinio-demo-write-test"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise DemoError(f"cannot write to --out {out}: {err.strerror or err}; choose a "
                        "writable folder") from None


def parse_config(argv: Optional[Sequence[str]] = None) -> DemoConfig:
    """Parse and validate the command line into a ``DemoConfig`` (``DemoError`` if bad)."""
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda: no CUDA device is available to this PyTorch "
                        f"({torch.__version__}); use --device cpu")
    if args.strengths is None:
        strengths: Tuple[float, ...] = (QUICK_STRENGTHS if args.quick else
                                        DEFAULT_STRENGTHS_MACS if args.regularizer == "macs"
                                        else DEFAULT_STRENGTHS_SIZE)
    else:
        strengths = tuple(v for group in args.strengths for v in group)
    if args.seeds is None:
        seeds: Tuple[int, ...] = QUICK_SEEDS if args.quick else DEFAULT_SEEDS
    else:
        seeds = tuple(v for group in args.seeds for v in group)
    targets = tuple(args.target or ())
    if targets and args.strengths is not None:
        raise DemoError("--target replaces --strengths: a target search needs no strength; "
                        "give one or the other")
    if targets:
        strengths = ()
    _once_each("--target", [name for name, _ in targets])
    _once_each("--strengths", strengths)
    _once_each("--seeds", seeds)
    schedule = QUICK_SCHEDULE if args.quick else Schedule()
    overrides = {"search_epochs": args.epochs, "warmup_epochs": args.warmup_epochs,
                 "finetune_epochs": args.finetune_epochs}
    schedule = dataclasses.replace(
        schedule, **{k: v for k, v in overrides.items() if v is not None})
    _check_output_folder(args.out)
    return DemoConfig(out=args.out, device=args.device, regularizer=args.regularizer,
                      strengths=strengths, seeds=seeds, fast=args.fast,
                      progress=args.progress, schedule=schedule, targets=targets)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the process exit code (0 on success)."""
    try:
        config = parse_config(argv)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    except DemoError as err:
        print(f"{PROG}: error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    missing = missing_demo_package()
    if missing is not None:
        print(f"{PROG}: error: {missing}", file=sys.stderr)
        return 2
    from .pipeline import run_demo
    from .report import format_table
    try:
        results = run_demo(config)
    except DemoError as err:
        print(f"{PROG}: error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(format_table(results))
    print(f"Wrote {config.out / 'results.json'}, {config.out / (results.plot or '')} and "
          f"{2 * sum(len(run.searched) for run in results.runs)} model files under "
          f"{config.out / 'models'}.")
    return 0
