"""Without the demo extras, ``python -m plinio.demo`` says in one line what to install."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plinio.demo import extras
from plinio.demo.__main__ import main

REPO_ROOT = Path(__file__).resolve().parents[2]

# runs ``python -m plinio.demo ARGS`` in an interpreter where importing matplotlib fails as
# it does when the package is not installed
_BLOCKED_RUN = textwrap.dedent("""
    import runpy, sys

    class BlockMatplotlib:
        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib" or name.startswith("matplotlib."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockMatplotlib())
    sys.argv = ["plinio-demo", *sys.argv[1:]]
    runpy.run_module("plinio.demo", run_name="__main__", alter_sys=True)
""")


def test_missing_matplotlib_is_one_line_naming_it_and_the_extra(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("plinio-demo: error: the demo needs matplotlib, which is not "
                               "installed")
    assert 'pip install "plinio[demo]"' in lines[0]
    assert 'pip install --no-build-isolation -e ".[demo]"' in lines[0]
    assert not (out / "results.json").exists()


def test_package_that_fails_to_import_is_named_with_its_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    real_import = extras.import_module

    def broken_onnxruntime(name: str):
        if name == "onnxruntime":
            raise ImportError("libonnxruntime.so: cannot open\nshared object file")
        return real_import(name)

    monkeypatch.setattr(extras, "import_module", broken_onnxruntime)
    assert main(["--quick", "--out", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert ("the demo needs onnxruntime, which is installed but fails to import "
            "(libonnxruntime.so: cannot open shared object file); reinstall it") in line


def test_demo_packages_are_the_demo_extra_of_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(extras.DEMO_PACKAGES.values()) == sorted(
        project["optional-dependencies"]["demo"])
