"""The C++/CUDA sources keep one style: clang-format (the version the `test` extra pins,
configured by .clang-format) has nothing to change in csrc/."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = (".cpp", ".h", ".cu", ".cuh")


def _clang_format() -> str:
    try:
        import clang_format
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("clang-format (the `test` extra) must be installed in CI")
        pytest.skip("clang-format is not installed (pip install clang-format)")
    return clang_format.get_executable("clang-format")


def test_csrc_is_clang_formatted():
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*")
                     if p.suffix in SUFFIXES)
    assert len(sources) >= 10, sources
    proc = subprocess.run([_clang_format(), "--dry-run", "--Werror", *sources], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        "csrc/ is not clang-formatted; run `clang-format -i` on these files:\n"
        + proc.stderr[-8000:])
