"""pytest-benchmark version of ``bench/bench_ops.py`` at CI sizes.

Each case checks first that the fused op and the eager formulation give the same values,
then times forward + backward of the requested variant. Compare them with
``pytest bench/test_bench_ops.py --benchmark-group-by=group``; the full-size side-by-side
table comes from ``python bench/bench_ops.py``.
"""
import pytest
import torch

import plinio.ops as ops
from bench.bench_ops import combine_case, masked_weight_case

CASES = {
    "combine-n4": lambda: combine_case(4, (4, 8, 16, 16), None),
    "masked-weight-conv1d": lambda: masked_weight_case((64, 64, 9), None),
    "masked-weight-conv2d": lambda: masked_weight_case((64, 64, 3, 3), None),
}


@pytest.mark.parametrize("variant", ["fused", "eager"])
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_op_benchmark(benchmark, case_name, variant):
    torch.manual_seed(0)
    case = CASES[case_name]()
    for got, want in zip(case.fused(), case.eager()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    benchmark.group = case_name
    benchmark.extra_info["backend"] = ops.get_backend("cpu") if variant == "fused" else "eager"
    benchmark.pedantic(getattr(case, variant), rounds=5, iterations=1, warmup_rounds=1)
