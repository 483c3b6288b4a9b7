"""pytest-benchmark version of ``bench/search_step.py`` at CI sizes (batch 2).

Each case first checks that the fast and the reference path compute the same loss on the
same batch (a benchmark of a wrong result is worthless), then times one search step of the
requested path. Compare the two with ``pytest bench --benchmark-group-by=param:workload``.
"""
import pytest
import torch

from bench.models import workloads
from bench.search_step import build_pair, forward_loss, search_step

WORKLOADS = sorted(workloads())


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_search_step(benchmark, workload, path):
    torch.manual_seed(0)
    setups = build_pair(workload, batch_size=2, device="cpu")
    losses = {}
    for label, setup in setups.items():
        torch.manual_seed(1)  # same dropout / Gumbel draws on both paths
        with torch.no_grad():
            losses[label] = forward_loss(setup)
    torch.testing.assert_close(losses["fast"], losses["reference"], rtol=1e-4, atol=1e-5)
    benchmark.group = workload
    benchmark.pedantic(search_step, args=(setups[path],), rounds=3, iterations=1,
                       warmup_rounds=1)
