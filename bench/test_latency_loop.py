"""``bench/latency_loop.py``'s statistics and report (the search and the timings run in the
bench itself, not in CI)."""
import pytest

from bench.latency_loop import Network, report, spearman


def test_spearman_ranks_with_ties():
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): Pearson of the ranks
    assert spearman([5.0, 7.0, 7.0, 9.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.9486833, rel=1e-6)


def test_report_gives_correlation_and_mean_errors():
    networks = [Network(f"n{i}", {"torch": p, "onnxruntime": p}, {"torch": 2 * p, "onnxruntime": 2 * p},
                        {"torch": m, "onnxruntime": m})
                for i, (p, m) in enumerate([(1e-5, 1e-5), (2.2e-5, 2e-5), (3.3e-5, 3e-5)])]
    text = report(networks, ["machine: test"])
    assert text.startswith("machine: test\n")
    assert "| n1 | 22.0 | 20.0 | 22.0 | 20.0 |" in text
    # errors 0, +10 %, +10 %: mean +6.7 %; uncorrected (twice the prediction) +113.3 %
    assert "| torch | 1.000 | +6.7 % | +113.3 % |" in text
