"""The Pareto plot: test accuracy vs MACs of every network configuration of a run.

One marker per configuration at its mean over the seeds, with bars from the lowest to the
highest value on both axes: the searched networks (one per strength), the hand-picked
fixed-choice networks and the unsearched supernet. Drawn with matplotlib's object API on an
Agg canvas, so it works without a display and without changing matplotlib's global backend
for the caller.
"""
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .summary import FIXED, SEARCHED, UNSEARCHED, ConfigSummary, Range

# family -> (legend text, marker, colour, size)
_STYLE: Dict[str, Tuple[str, str, str, float]] = {
    SEARCHED: ("searched + fine-tuned (one per strength λ)", "o", "tab:blue", 45),
    FIXED: ("fixed choice in every block, all channels kept", "s", "tab:green", 40),
    UNSEARCHED: ("unsearched supernet (θ = 1/n)", "X", "tab:red", 80),
}


def pareto_front(points: Sequence[ConfigSummary]) -> List[ConfigSummary]:
    """Points not dominated by another (fewer or equal mean MACs and higher or equal mean
    accuracy, strictly better in one), sorted by MACs."""
    def key(p: ConfigSummary) -> Tuple[float, float]:
        return p.macs.mean, p.test_accuracy.mean

    front = []
    for p in points:
        pm, pa = key(p)
        dominated = any(qm <= pm and qa >= pa and (qm < pm or qa > pa)
                        for qm, qa in map(key, points))
        if not dominated:
            front.append(p)
    return sorted(front, key=key)


def _spread(value: Range, scale: float = 1.0) -> List[List[float]]:
    """matplotlib's asymmetric error bar: distance from the mean down and up."""
    return [[scale * (value.mean - value.low)], [scale * (value.high - value.mean)]]


def draw_pareto(points: Sequence[ConfigSummary], title: str) -> Figure:
    """The accuracy-vs-MACs figure with every configuration, labelled, and the front."""
    figure = Figure(figsize=(7.5, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    front = pareto_front(points)
    if len(front) > 1:
        # staircase: the best mean accuracy reachable with at most x MACs
        axes.step([p.macs.mean for p in front], [100 * p.test_accuracy.mean for p in front],
                  "--", where="post", color="tab:gray", linewidth=1, label="Pareto front",
                  zorder=1)
    for family, (legend, marker, colour, size) in _STYLE.items():
        members = [p for p in points if p.family == family]
        for index, p in enumerate(members):
            axes.errorbar(p.macs.mean, 100 * p.test_accuracy.mean, xerr=_spread(p.macs),
                          yerr=_spread(p.test_accuracy, 100.0), fmt="none", ecolor=colour,
                          elinewidth=1, alpha=0.6, zorder=2)
            axes.scatter([p.macs.mean], [100 * p.test_accuracy.mean], marker=marker,
                         color=colour, s=size, zorder=3, label=legend if index == 0 else None)
            if p.tag:
                axes.annotate(p.tag, (p.macs.mean, 100 * p.test_accuracy.mean),
                              textcoords="offset points", xytext=(6, 5), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("MACs per inference (log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.margins(x=0.1, y=0.2)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8)
    return figure


def plot_pareto(points: Sequence[ConfigSummary], path: Path, title: str) -> Path:
    """Write ``draw_pareto``'s figure as a PNG at ``path`` and return the path."""
    figure = draw_pareto(points, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    return path
