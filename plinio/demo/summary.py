"""Ranges over seeds: one summary per network configuration of a run (the unsearched
supernet, each strength, each fixed choice), read by the table, the plot and results.json.

A single seed's numbers depend on the machine (floating-point rounding steers the search), so
the demo reports the spread over several seeds rather than one outcome.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

from .costs import Cost
from .results import FixedResult, SearchedResult, SeedRun, UnsearchedResult

UNSEARCHED, SEARCHED, FIXED = "unsearched", "searched", "fixed"
Result = Union[UnsearchedResult, SearchedResult, FixedResult]


@dataclass(frozen=True)
class Range:
    """Lowest, highest and mean value over the seeds."""

    low: float
    high: float
    mean: float

    @staticmethod
    def of(values: Sequence[float]) -> "Range":
        if not values:
            raise ValueError("Range.of: no values (a run has at least one seed)")
        return Range(min(values), max(values), sum(values) / len(values))


@dataclass(frozen=True)
class ConfigSummary:
    """One network configuration over all seeds.

    ``params_change`` / ``macs_change``: relative change vs the same seed's unsearched
    supernet (``None`` on the unsearched row). ``chosen_branches``: the blocks the search
    kept, one dict per seed (searched rows only).
    """

    label: str
    # the short name next to the point on the plot ("λ=0.1", "conv3x3"; none for the
    # unsearched supernet, which the legend names)
    tag: str
    family: str
    test_accuracy: Range
    params: Range
    macs: Range
    params_change: Optional[Range]
    macs_change: Optional[Range]
    chosen_branches: Optional[List[Dict[str, str]]] = None


def _summary(label: str, tag: str, family: str, runs: Sequence[SeedRun],
             pick: Callable[[SeedRun], Result],
             chosen_branches: Optional[List[Dict[str, str]]] = None) -> ConfigSummary:
    """Summarize the result ``pick(run)`` of every run; costs are compared per seed."""
    picked = [pick(run) for run in runs]
    costs = [item.cost for item in picked]
    references = [run.unsearched.cost for run in runs]

    def change(value: Callable[[Cost], float]) -> Optional[Range]:
        if family == UNSEARCHED:
            return None
        return Range.of([(value(c) - value(ref)) / value(ref)
                         for c, ref in zip(costs, references)])

    return ConfigSummary(
        label=label, tag=tag, family=family,
        test_accuracy=Range.of([item.test_accuracy for item in picked]),
        params=Range.of([c.params for c in costs]), macs=Range.of([c.macs for c in costs]),
        params_change=change(lambda c: c.params), macs_change=change(lambda c: c.macs),
        chosen_branches=chosen_branches)


def summarize(runs: Sequence[SeedRun]) -> List[ConfigSummary]:
    """Rows in report order: unsearched supernet, each strength, each fixed choice.

    Every run comes from the same options, so the i-th searched / fixed result of each run
    is the same configuration.
    """
    if not runs:
        raise ValueError("summarize: no runs (a demo run has at least one seed)")
    first = runs[0]
    rows = [_summary("unsearched supernet", "", UNSEARCHED, runs, lambda run: run.unsearched)]
    for index, searched in enumerate(first.searched):
        rows.append(_summary(
            searched.label, searched.tag, SEARCHED, runs,
            lambda run, i=index: run.searched[i],
            chosen_branches=[run.searched[index].chosen_branches for run in runs]))
    for index, fixed in enumerate(first.fixed):
        rows.append(_summary(f"fixed: all {fixed.kind}", fixed.kind, FIXED, runs,
                             lambda run, i=index: run.fixed[i]))
    return rows
