"""bench/profile_step.py at CI sizes: every requested search is profiled, its ops listed by
self time per step, and the conv ops of a convolutional workload are among them."""
import pytest

from bench.profile_step import main


def test_profile_lists_the_ops_of_every_search(capsys):
    results = main(["--workload", "tcn", "--searches", "fast,plain", "--batch-size", "2", "--steps", "2",
                    "--top", "5", "--threads", "1"])
    assert list(results) == ["fast", "plain"]
    for ops in results.values():
        assert ops and all(op.ms > 0 and op.calls > 0 for op in ops)
        assert [op.ms for op in ops] == sorted((op.ms for op in ops), reverse=True)
    assert any("convolution" in op.name for op in results["plain"])
    out = capsys.readouterr().out
    assert "\nfast: " in out and "\nplain: " in out and "| op | ms per step | calls per step |" in out


@pytest.mark.parametrize("args", [["--searches", "fast,sparse"], ["--workload", "nonexistent"], ["--steps", "0"],
                                  ["--prune", "1"]])
def test_profile_rejects_bad_options(args):
    with pytest.raises(SystemExit):
        main(args)
