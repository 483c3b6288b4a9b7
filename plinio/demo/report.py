"""The final tables printed to the terminal and ``results.json``."""
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch

from .machine import describe
from .model import BLOCK_WIDTHS
from .results import DemoResults
from .summary import SEARCHED, ConfigSummary, Range, summarize


def human(value: float) -> str:
    """Compact count: 950, 12.3k, 1.58M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def signed_percent(value: float) -> str:
    """A relative change in percent, signed, without the unit (0.25 → '+25.0')."""
    return f"{100.0 * value:+.1f}"


def span(value: Range, show: Callable[[float], str], unit: str = "") -> str:
    """'low to high' with ``show`` applied to both ends, or one value when they print alike."""
    low, high = show(value.low), show(value.high)
    return f"{low}{unit}" if low == high else f"{low} to {high}{unit}"


def _aligned(header: List[str], rows: List[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _cost_rows(summaries: List[ConfigSummary]) -> List[List[str]]:
    def accuracy(value: float) -> str:
        return f"{100 * value:.1f}"

    def change(value: Optional[Range]) -> str:
        return "" if value is None else span(value, signed_percent, "%")

    return [[s.label, span(s.test_accuracy, accuracy, "%"), span(s.params, human),
             span(s.macs, human), change(s.params_change), change(s.macs_change)]
            for s in summaries]


def _choice_rows(summaries: List[ConfigSummary]) -> List[List[str]]:
    return [[s.tag,
             *(" / ".join(chosen[block] for block in BLOCK_WIDTHS)
               for chosen in s.chosen_branches or [])]
            for s in summaries if s.family == SEARCHED]


def _met(measured: float, target: float) -> str:
    """'yes (-4.0%)' or 'no (+12.0%)': met or not, and the distance to the target."""
    return f"{'yes' if measured <= target else 'no'} ({signed_percent(measured / target - 1)}%)"


def _cost_check_lines(results: DemoResults) -> List[str]:
    """Per seed and searched network: each searched cost as the search model predicts it for
    its export and as measured on the exported network, and whether it meets its target."""
    rows = []
    for run in results.runs:
        for r in run.searched:
            for name in r.predicted:
                target = r.targets.get(name)
                rows.append([str(run.seed), r.tag, name, human(r.predicted[name]), human(r.measured[name]),
                             "" if target is None else human(target),
                             "" if target is None else _met(r.measured[name], target)])
    lines = ["", "Costs of the searched networks: predicted by the search model (binarized masks, argmax "
                 "branches) and measured on the exported network (size: every parameter; peak_memory: bytes):"]
    lines += _aligned(["seed", "search", "cost", "predicted", "measured", "target", "met"], rows)
    if any(cells[-1].startswith("no") for cells in rows):
        lines.append("A target is missed when the search ends before its strength (x1.5 per missed epoch) "
                     "outweighs the accuracy loss: more search epochs (--epochs) give it time.")
    if any(r.measured[name] < 0.9 * target for run in results.runs for r in run.searched
           for name, target in r.targets.items()):
        lines.append("More than 10 % under a target: the penalty acts only above the target and the "
                     "search moves the cost in steps (a block switching kind, Adam moving a layer's "
                     "channel masks together), so it can overshoot the budget; then only the task loss "
                     "pulls the cost back up.")
    return lines


def format_table(results: DemoResults) -> str:
    """The cost/accuracy table (ranges over seeds), the blocks chosen per seed, and notes
    saying what each row is and where the numbers were measured."""
    summaries = summarize(results.runs)
    seeds = [run.seed for run in results.runs]
    several = len(seeds) > 1
    out = [f"Seeds {', '.join(map(str, seeds))}: each cell is the range over the seeds (one "
           f"value when they agree)." if several else f"Seed {seeds[0]}."]
    out += _aligned(["model", "test acc", "params", "MACs", "params vs unsearched",
                     "MACs vs unsearched"], _cost_rows(summaries))
    out += ["", f"Blocks chosen by the search ({' / '.join(BLOCK_WIDTHS)}):"]
    out += _aligned(["strength", *(f"seed {seed}" for seed in seeds)], _choice_rows(summaries))
    if results.options.get("targets") or results.options.get("regularizer") == "peak_memory":
        out += _cost_check_lines(results)
    worst_onnx = max((r.onnx_max_abs_diff for run in results.runs for r in run.searched),
                     default=0.0)
    out += [
        "",
        "unsearched supernet: after the warm-up, its cost weighing each branch by 1/n. "
        "strength λ: searched, exported and fine-tuned. fixed: every block of one kind, all "
        "channels kept, trained for the same epochs (warm-up + search, then fine-tune). See "
        "the README section 'What the demo shows'.",
        f"ONNX (onnxruntime) vs PyTorch on the test split: max abs diff {worst_onnx:.2g}.",
        f"Wall time {results.wall_time_s:.0f} s on {describe(results.machine)}. Other CPUs "
        f"round differently and may choose other blocks.",
    ]
    return "\n".join(out)


def _jsonable(value: Any) -> Any:
    """Plain JSON values from dataclasses, tensors, paths, tuples and non-finite floats."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, type):
        return value.__name__
    return str(value)


def results_to_dict(results: DemoResults) -> dict:
    """``results`` as the JSON document written to ``results.json``: the options, the
    machine, every seed's results and the ranges over the seeds."""
    return {**_jsonable(results), "summary": _jsonable(summarize(results.runs))}


def write_results_json(results: DemoResults, path: Path) -> Path:
    """Write ``results.json`` (indented, keys in a stable order) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_to_dict(results), indent=2) + "\n")
    return path
