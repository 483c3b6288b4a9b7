"""bench/search_time.py on a slice of the digits (seconds): it runs every configuration,
reports times and exported architectures, and plinio's fast and reference paths export the
same architecture from the same seeded search."""
import pytest
import torch

import bench.search_time as search_time
from plinio.demo.data import DigitsData, Split, load_digits_data
from plinio.demo.model import branch_names


def _small_digits(seed: int) -> DigitsData:
    data = load_digits_data(seed)

    def head(split: Split, n: int) -> Split:
        return Split(split.images[:n], split.labels[:n])

    return DigitsData(head(data.train, 64), head(data.val, 32), head(data.test, 32))


def test_search_time_reports_times_and_the_same_architecture(monkeypatch, capsys):
    monkeypatch.setattr(search_time, "load_digits_data", _small_digits)
    runs = search_time.main(["--warmup-epochs", "1", "--search-epochs", "1",
                             "--strength", "1"])
    assert [r.configuration for r in runs] == ["fast", "dense", "reference"]
    for run in runs:
        assert run.conversion_s > 0 and run.warmup_s > 0 and run.search_s > 0
        assert set(run.architecture) == {"stem.0", "block1", "block2", "block3", "classifier"}
        assert run.architecture["block2"]["branch"] in ("conv3x3", "conv5x5", "dwsep3x3")
        assert 0 < run.exported_macs
    assert runs[0].architecture == runs[1].architecture == runs[2].architecture
    assert runs[0].exported_macs == runs[1].exported_macs == runs[2].exported_macs
    out = capsys.readouterr().out
    assert "| reference |" in out and "same architecture as fast" in out
    assert "exported architecture, reference (plinio reference path (fast=False)):" in out


def _supernet_entry(block: str, widths: dict) -> dict:
    """arch_summary() entry of a demo block whose branch 1 has the largest θ."""
    branches = {f"branch_{i}": {"alpha": 0.5 if i == 1 else 0.1, "type": "Sequential"}
                for i in range(len(branch_names(block)))}
    for i, (cin, cout) in widths.items():
        branches[f"branch_{i}"][f"{block}.sn_input_layers.{i}.0"] = {
            "in_features": cin, "out_features": cout, "type": "PITConv2d"}
    return {"type": "PITSuperNetModule", "supernet_branches": branches}


def test_exported_architecture_keeps_the_largest_theta_branch():
    summary = {
        "stem.0": {"in_features": 1, "out_features": 5, "type": "PITConv2d"},
        "classifier": {"in_features": 40, "out_features": 10, "type": "PITLinear"},
        **{block: _supernet_entry(block, {0: (5, 7), 1: (5, 3)})
           for block in ("block1", "block2", "block3")}}
    arch = search_time.exported_architecture(summary)
    assert arch["stem.0"] == "1->5" and arch["classifier"] == "40->10"
    assert arch["block2"] == {"branch": "conv5x5", "block2.sn_input_layers.1.0": "5->3"}


def test_search_time_rejects_unknown_configurations():
    with pytest.raises(SystemExit):
        search_time.main(["--configs", "fast,sparse"])


def test_search_time_of_a_bench_workload_on_synthetic_data(capsys):
    runs = search_time.main(["--workload", "tcn", "--configs", "fast,dense", "--warmup-epochs", "1",
                             "--search-epochs", "1", "--batches", "2", "--batch-size", "4"])
    assert [r.configuration for r in runs] == ["fast", "dense"]
    assert runs[0].architecture == runs[1].architecture and "classifier" in runs[0].architecture
    assert runs[0].exported_macs == runs[1].exported_macs > 0
    assert all(r.search_s > 0 for r in runs)
    assert "tcn on synthetic data (2 batches of 4 per epoch)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        search_time.main(["--workload", "nonexistent"])


def test_search_time_device_checks():
    with pytest.raises(SystemExit):
        search_time.main(["--device", "tpu", "--workload", "tcn"])
    with pytest.raises(SystemExit):  # the digits demo runs on the CPU only
        search_time.main(["--device", "cuda"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_search_time_of_a_bench_workload_on_cuda(capsys):
    runs = search_time.main(["--workload", "dscnn", "--configs", "fast,dense", "--device", "cuda",
                             "--warmup-epochs", "1", "--search-epochs", "2", "--batches", "2",
                             "--batch-size", "8", "--strength", "5"])
    assert [r.configuration for r in runs] == ["fast", "dense"]
    assert all(r.search_s > 0 and r.exported_macs > 0 and r.steps == 6 for r in runs)
    assert ", GPU " in capsys.readouterr().out


def test_step_log_counts_the_steps_that_began_with_nothing_pruned():

    from plinio.methods import PIT

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 4 * 4, 4))
    net = PIT(model, input_shape=(3, 6, 6))
    log = search_time.StepLog(net)
    x = torch.randn(2, 3, 6, 6)
    for _ in range(3):
        net(x)
    log.end_phase()
    net.eval()
    net(x)  # an eval-mode forward is no step
    net.train()
    alpha = next(a for name, a in net.named_nas_parameters() if "out_features_masker" in name)
    with torch.no_grad():
        alpha[:3] = 0.0  # three channels below the threshold from now on
    for _ in range(2):
        net(x)
    log.end_phase()
    log.close()
    net(x)  # after close: not logged
    steps, unpruned, unpruned_s = log.counts()
    assert (steps, unpruned) == (5, 3)
    assert unpruned_s > 0 and log.hook_s > 0


def test_search_time_prints_the_bound_of_the_dense_run(capsys):
    runs = search_time.main(["--workload", "dscnn", "--configs", "fast,dense", "--warmup-epochs", "1",
                             "--search-epochs", "2", "--batches", "2", "--batch-size", "2"])
    for run in runs:
        assert run.steps == (1 + 2) * 2
        assert 2 <= run.unpruned_steps <= run.steps  # the warm-up prunes nothing
        assert 0 < run.unpruned_s < run.total_s
    dense = runs[1]
    assert dense.sparse_bound == pytest.approx(dense.total_s / (dense.conversion_s + dense.unpruned_s))
    assert f"at most {dense.total_s:.2f} / ({dense.conversion_s:.2f} + {dense.unpruned_s:.2f})" \
        in capsys.readouterr().out
