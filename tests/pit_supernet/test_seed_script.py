"""The docs/behaviour.md §7 seed example runs unchanged as a user script (short search, then export)."""
import os
import pathlib
import re
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "seed_example.py"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_seed_example_script_searches_and_exports():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "initial macs 54657024" in out
    losses = [float(v) for v in re.findall(r"step \d loss ([0-9.]+)", out)]
    assert len(losses) == 3
    final = int(re.search(r"final macs (\d+)", out).group(1))
    assert final < 54657024  # the MACs regularizer pulled θ towards cheaper branches
    assert "exported output (1, 32, 64, 64)" in out
    assert "'supernet_branches'" in out
