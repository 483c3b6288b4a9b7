"""Bad options end as one line on stderr and a non-zero exit code, never a traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plinio.demo.__main__ import main
from plinio.demo.cli import parse_config
from plinio.demo.config import (DEFAULT_SEEDS, DEFAULT_STRENGTHS_MACS, QUICK_SEEDS,
                                QUICK_STRENGTHS)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _assert_one_line_error(text: str, *fragments: str) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("plinio-demo: error: ")
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--strengths", "-1"], ["--strengths", "-1", ">= 0"]),
    (["--strengths", "0.1,-0.5"], ["-0.5"]),
    (["--strengths", "abc"], ["'abc' is not a number"]),
    (["--strengths", "nan"], ["finite"]),
    (["--strengths", "0.1", "0.1"], ["0.1 given more than once"]),
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--warmup-epochs", "-2"], ["negative"]),
    (["--seed", "-1"], ["--seed"]),
    (["--seeds", "0,x"], ["--seeds", "'x' is not an integer"]),
    (["--seeds", "1", "2,1"], ["--seeds: 1 given more than once"]),
    (["--seeds", "4294967296"], ["too large"]),
    (["--regularizer", "flops"], ["--regularizer", "flops"]),
    (["--target", "flops=1k"], ["--target", "NAME one of macs, size, peak_memory"]),
    (["--target", "macs=-5"], ["--target", "finite and > 0"]),
    (["--target", "macs=lots"], ["--target", "'lots' is not a number"]),
    (["--target", "macs"], ["--target", "NAME=VALUE"]),
    (["--target", "macs=1k", "--target", "macs=2k"], ["--target: macs given more than once"]),
    (["--target", "macs=1k", "--strengths", "0.1"], ["--target replaces --strengths"]),
    (["--bogus"], ["--bogus"]),
])
def test_bad_option_in_process(args, fragments, tmp_path, capsys):
    code = main([*args, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    _assert_one_line_error(captured.err, *fragments)
    assert captured.out == ""
    assert not (tmp_path / "out" / "results.json").exists()


def test_unwritable_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["--out", str(blocker)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "--out", "not a folder")
    assert main(["--out", str(blocker / "sub")]) == 2
    _assert_one_line_error(capsys.readouterr().err, "cannot write to --out")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_a_clear_error(tmp_path, capsys):
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "--device cuda", "--device cpu")


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--out", "--device", "--strengths", "--regularizer", "--target", "--epochs", "--seeds",
                   "--seed", "--fast", "--no-fast", "--quick"):
        assert option in out
    # run times are stated with their conditions, never as a bare promise
    text = " ".join(out.split())
    assert "CPU time on one thread of a 2-core AMD EPYC VM" in text
    assert "OMP_NUM_THREADS=1" in text


def test_defaults_and_overrides(tmp_path):
    config = parse_config(["--out", str(tmp_path)])
    assert config.strengths == DEFAULT_STRENGTHS_MACS and config.fast and config.device == "cpu"
    assert config.seeds == DEFAULT_SEEDS and len(DEFAULT_SEEDS) > 1
    quick = parse_config(["--quick", "--out", str(tmp_path), "--epochs", "2", "--no-fast",
                          "--strengths", "0.5,2", "3", "--regularizer", "size"])
    assert quick.strengths == (0.5, 2.0, 3.0)
    assert quick.schedule.search_epochs == 2 and quick.schedule.warmup_epochs == 1
    assert not quick.fast and quick.regularizer == "size"
    assert parse_config(["--quick", "--out", str(tmp_path)]).strengths == QUICK_STRENGTHS
    assert quick.seeds == QUICK_SEEDS
    assert parse_config(["--seeds", "3,1", "7", "--out", str(tmp_path)]).seeds == (3, 1, 7)
    assert parse_config(["--seed", "5", "--out", str(tmp_path)]).seeds == (5,)
    bounded = parse_config(["--target", "macs=200k", "--target", "peak_memory=16.5k", "--regularizer",
                            "peak_memory", "--out", str(tmp_path)])
    assert bounded.targets == (("macs", 200e3), ("peak_memory", 16.5e3)) and bounded.strengths == ()
    assert bounded.regularizer == "peak_memory" and config.targets == ()


def test_bad_option_in_a_subprocess(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "plinio.demo", "--strengths", "-3",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    _assert_one_line_error(done.stderr, "-3")
    assert done.stdout == ""
