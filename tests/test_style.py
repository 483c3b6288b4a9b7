"""Python style: ``ruff check`` (configured in pyproject.toml) passes on every source folder."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("plinio", "tests", "bench", "examples")


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed (it comes with pip install -e '.[test]')")
def test_ruff_check_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *CHECKED], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (f"ruff check {' '.join(CHECKED)} failed (fix the findings; "
                                    f"`ruff check --fix` handles some):\n{result.stdout}{result.stderr}")
