"""The final table printed to the terminal and ``results.json``."""
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, List

import torch

from .model import BLOCK_WIDTHS
from .results import DemoResults


def human(value: float) -> str:
    """Compact count: 950, 12.3k, 1.58M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def change(value: float, reference: float) -> str:
    """Relative change vs ``reference`` as a signed percentage."""
    if reference == 0:
        return "n/a"
    return f"{100.0 * (value - reference) / reference:+.1f}%"


def format_table(results: DemoResults) -> str:
    """One row per network: accuracy, size, MACs, change vs the seed, chosen blocks."""
    seed = results.seed
    header = ["model", "test acc", "params", "MACs", "params vs seed", "MACs vs seed",
              *BLOCK_WIDTHS]
    rows: List[List[str]] = [[
        "unsearched supernet", f"{100 * seed.test_accuracy:.1f}%", human(seed.cost.params),
        human(seed.cost.macs), "", "", *(["all (θ=1/n)"] * len(BLOCK_WIDTHS))]]
    for r in results.rows:
        rows.append([f"strength {r.strength:g}", f"{100 * r.test_accuracy:.1f}%",
                     human(r.cost.params), human(r.cost.macs),
                     change(r.cost.params, seed.cost.params), change(r.cost.macs, seed.cost.macs),
                     *(r.chosen_branches[b] for b in BLOCK_WIDTHS)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    worst_onnx = max((r.onnx_max_abs_diff for r in results.rows), default=0.0)
    out.append("")
    out.append("MACs/params of the unsearched supernet weigh each branch by 1/n (SPEC §4.3); "
               f"searched rows are the exported, fine-tuned networks.")
    out.append(f"ONNX (onnxruntime) vs PyTorch on the test split: max abs diff "
               f"{worst_onnx:.2g}. Wall time {results.wall_time_s:.0f} s.")
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
    """``results`` as the JSON document written to ``results.json``."""
    return _jsonable(results)


def write_results_json(results: DemoResults, path: Path) -> Path:
    """Write ``results.json`` (indented, keys in a stable order) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_to_dict(results), indent=2) + "\n")
    return path
