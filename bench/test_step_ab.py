"""bench/step_ab.py: each shortcut switched off takes its fallback (and only in the copy
switched off), the two copies compute the same step, and the table has one row per case."""
import pytest
import torch

from bench import step_ab
from bench.search_step import build_setups, search_step
from plinio.fast import sparse_conv
from plinio.methods.pit.cost_model import _native_costs_run, _SoftBuiltinCosts
from plinio.methods.pit.nn.module import PITWeightedModule
from plinio.methods.pit_supernet.nn.combiner import PITSuperNetCombiner


def _count_calls(monkeypatch, owner, name):
    calls = []
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("shortcut, owner, name", [
    ("native", sparse_conv._ConvKernels, "compact_conv"),
    ("theta", PITSuperNetCombiner, "_sampled_soft_theta"),
    ("costs", _SoftBuiltinCosts, "apply"),
    ("masks", PITWeightedModule, "_channel_mask_args"),
])
def test_a_shortcut_switched_off_takes_its_fallback_in_that_copy_only(monkeypatch, shortcut, owner, name):
    if shortcut in ("native", "masks") and not sparse_conv.native_compact_conv():
        pytest.skip("plinio::compact_conv is not available (extension not built)")
    if shortcut == "costs" and not _native_costs_run(torch.zeros(1)):
        pytest.skip("plinio::pit_soft_costs is not available (extension not built)")
    setups = [build_setups("dscnn", 2, "cpu", prune_fraction=0.75, variants=("fast",))["fast"] for _ in range(2)]
    on, off = setups[0], step_ab.without(setups[1], shortcut)
    calls = _count_calls(monkeypatch, owner, name)
    torch.manual_seed(0)  # the same dropout noise in both
    loss_off = search_step(off)
    assert calls == []
    torch.manual_seed(0)
    loss_on = search_step(on)
    assert calls
    torch.testing.assert_close(loss_on, loss_off)
    calls.clear()
    search_step(on)
    assert calls and shortcut in step_ab.SHORTCUTS


def test_edges_off_runs_the_edge_layers_through_the_python_function(monkeypatch):
    if not sparse_conv.native_compact_conv():
        pytest.skip("plinio::compact_conv is not available (extension not built)")
    setups = [build_setups("dscnn", 2, "cpu", prune_fraction=0.75, variants=("fast",))["fast"] for _ in range(2)]
    on, off = setups[0], step_ab.without(setups[1], "edges")
    calls = _count_calls(monkeypatch, sparse_conv._SparseMaskedConv, "apply")
    torch.manual_seed(0)
    loss_off = search_step(off)
    python_calls_off = len(calls)
    calls.clear()
    torch.manual_seed(0)
    loss_on = search_step(on)
    assert python_calls_off >= len(calls) + 2  # the first convolution and the classifier
    torch.testing.assert_close(loss_on, loss_off)


def test_the_table_has_a_row_per_case_and_no_theta_or_masks_row_where_they_do_not_apply(capsys):
    threads = torch.get_num_threads()
    try:
        rows = step_ab.main(["--workloads", "tcn,dscnn", "--prune", "0.75", "--repeats", "1",
                             "--steps-per-round", "1", "--batch-size", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert [(r.workload, r.shortcut) for r in rows] == [
        ("tcn", "native"), ("tcn", "edges"), ("tcn", "costs"),
        ("dscnn", "native"), ("dscnn", "theta"), ("dscnn", "edges"), ("dscnn", "costs"), ("dscnn", "masks")]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| dscnn")]
    assert len(table) == 5 and all(r.on_ms > 0 and r.off_ms > 0 and len(r.ratios) == 1 for r in rows)


def test_an_unknown_shortcut_is_refused():
    with pytest.raises(SystemExit):
        step_ab.main(["--shortcuts", "fused"])
