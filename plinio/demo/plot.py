"""The Pareto plot: test accuracy vs MACs of the searched networks and of the seed.

Drawn with matplotlib's object API on an Agg canvas, so it works without a display and
without changing matplotlib's global backend for the caller.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class ParetoPoint:
    """One network on the plot."""

    label: str
    macs: float
    accuracy: float


def pareto_front(points: Sequence[ParetoPoint]) -> List[ParetoPoint]:
    """Points not dominated by another (fewer or equal MACs and higher or equal accuracy,
    strictly better in one), sorted by MACs."""
    front = []
    for p in points:
        dominated = any(q.macs <= p.macs and q.accuracy >= p.accuracy
                        and (q.macs < p.macs or q.accuracy > p.accuracy) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p.macs, p.accuracy))


def draw_pareto(seed: ParetoPoint, searched: Sequence[ParetoPoint], title: str) -> Figure:
    """The accuracy-vs-MACs figure: searched points labelled by strength, the seed, the front."""
    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    front = pareto_front([seed, *searched])
    if len(front) > 1:
        # staircase: the best accuracy reachable with at most x MACs
        axes.step([p.macs for p in front], [100 * p.accuracy for p in front], "--",
                  where="post", color="tab:gray", linewidth=1, label="Pareto front", zorder=1)
    axes.scatter([p.macs for p in searched], [100 * p.accuracy for p in searched],
                 color="tab:blue", s=45, label="searched + fine-tuned (one per strength)",
                 zorder=2)
    for p in searched:
        axes.annotate(p.label, (p.macs, 100 * p.accuracy), textcoords="offset points",
                      xytext=(6, 5), fontsize=8)
    axes.scatter([seed.macs], [100 * seed.accuracy], marker="X", color="tab:red", s=80,
                 label=seed.label, zorder=3)
    axes.set_xscale("log")
    axes.set_xlabel("MACs per inference (log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.margins(x=0.1, y=0.2)
    axes.legend(loc="best", fontsize=8)
    return figure


def plot_pareto(seed: ParetoPoint, searched: Sequence[ParetoPoint], path: Path,
                title: str) -> Path:
    """Write ``draw_pareto``'s figure as a PNG at ``path`` and return the path."""
    figure = draw_pareto(seed, searched, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    return path
