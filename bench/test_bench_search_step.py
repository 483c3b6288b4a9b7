"""pytest-benchmark version of ``bench/search_step.py`` at CI sizes (batch 2).

Each workload's two paths are built once; before timing, the fast and the reference path
must compute the same loss on the same batch (a benchmark of a wrong result is worthless).
Compare the two paths with ``pytest bench --benchmark-group-by=param:workload``.
"""
from typing import Callable, Dict

import pytest

from bench.models import workloads
from bench.search_step import SearchSetup, build_pair, same_loss, search_step

WORKLOADS = sorted(workloads())


@pytest.fixture(scope="module")
def pair_of() -> Callable[[str], Dict[str, SearchSetup]]:
    """Workload name → {'fast', 'reference'} setups, built once per module."""
    cache: Dict[str, Dict[str, SearchSetup]] = {}

    def get(name: str) -> Dict[str, SearchSetup]:
        if name not in cache:
            setups = build_pair(name, batch_size=2, device="cpu")
            assert same_loss(setups), f"{name}: fast and reference paths disagree"
            cache[name] = setups
        return cache[name]

    return get


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_search_step(benchmark, pair_of, workload, path):
    setup = pair_of(workload)[path]
    benchmark.group = workload
    benchmark.pedantic(search_step, args=(setup,), rounds=3, iterations=1, warmup_rounds=1)
