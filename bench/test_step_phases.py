"""bench/step_phases.py at CI sizes: the timed step is ``search_step`` with every phase timed
once, and the script reports every phase of every search."""
import pytest
import torch

from bench.search_step import STEP_PHASES, build_setups, forward_loss, search_step
from bench.step_phases import SEARCHES, main, process_usage, timed_step


@pytest.mark.parametrize("workload", ["tcn", "dscnn"])
def test_timed_step_is_the_search_step(workload):
    """Every phase timed once; the loss before the step and the parameters after it are
    those of an untimed ``search_step`` (the same random draws: DS-CNN has dropout)."""
    timed, untimed = (build_setups(workload, 2, "cpu", prune_fraction=0.5, variants=("fast",))["fast"]
                      for _ in range(2))
    with torch.no_grad():
        torch.manual_seed(1)
        expected = float(forward_loss(untimed))
    torch.manual_seed(1)
    times, loss = timed_step(timed)
    torch.manual_seed(1)
    search_step(untimed)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert list(times) == list(STEP_PHASES) and all(t >= 0 for t in times.values())
    for (name, a), (_, b) in zip(timed.wrapper.named_parameters(), untimed.wrapper.named_parameters()):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}")


def test_script_reports_every_phase_of_every_search(capsys):
    rows = main(["--workloads", "tcn", "--prune", "0.5", "--batch-sizes", "2,1", "--repeats", "2",
                 "--threads", "1"])
    assert [(r.batch_size, r.search) for r in rows] == [(b, s) for b in (2, 1) for s in SEARCHES]
    for row in rows:
        assert set(row.ms) == set(STEP_PHASES) and all(v > 0 for v in row.ms.values())
        assert row.step_ms == pytest.approx(sum(row.ms.values()))
        if process_usage() is not None:
            assert row.faults is not None and row.faults >= 0 and row.kernel_ms is not None and row.kernel_ms >= 0
    out = capsys.readouterr().out
    assert "| tcn | 50% | 1 | fast |" in out and "CPU " in out


@pytest.mark.parametrize("argv", [["--batch-sizes", "0"], ["--batch-sizes", "a"], ["--workloads", "nope"],
                                  ["--repeats", "0"]])
def test_script_rejects_bad_options(argv):
    with pytest.raises(SystemExit):
        main(argv)


def test_process_usage_counts_the_page_faults_of_fresh_memory():
    if process_usage() is None:
        pytest.skip("no resource module on this platform")
    before = process_usage()
    torch.empty(16 * 2 ** 20).fill_(1.0)  # 64 MiB of fresh pages, touched
    after = process_usage()
    assert after[0] > before[0] and after[1] >= before[1]
