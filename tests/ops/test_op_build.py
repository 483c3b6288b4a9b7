"""Building and loading plinio._C: a build that cannot see the installed torch stops at
once, and a library compiled against another torch release gives one warning line (with
the rebuild command) and the reference kernels, not a crash."""
import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from ops_backends import require

ROOT = Path(__file__).resolve().parents[2]

# Loads plinio.ops (after some set-up code) and prints the backend and plinio._C's warnings.
_REPORT = """
    import json, warnings
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import plinio.ops as ops
        backend = ops.get_backend("cpu")
        value = ops.combine([torch.ones(2)], torch.full((1,), 0.5)).tolist()
    ours = [str(w.message) for w in caught if "plinio._C" in str(w.message)]
    print(json.dumps({"backend": backend, "value": value, "warnings": ours}))
    """


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _report(setup: str) -> dict:
    proc = _python(textwrap.dedent(setup) + textwrap.dedent(_REPORT))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_one_line_rebuild_warning(report: dict, why: str) -> None:
    assert report["backend"] == "reference" and report["value"] == [0.5, 0.5]
    assert len(report["warnings"]) == 1, report["warnings"]
    message = report["warnings"][0]
    assert "\n" not in message
    assert why in message and "`pip install --no-build-isolation -e .`" in message


def test_import_plinio_C_works_on_its_own():
    require("cpp", "cpu")
    proc = _python(textwrap.dedent("""
        import plinio._C as ext
        import torch
        print(ext.cpu_isa(), ext.torch_version())
        """))
    assert proc.returncode == 0, proc.stderr
    isa, version = proc.stdout.split()
    assert isa in ("avx2", "base")
    assert torch.__version__.startswith(version)


def test_library_of_another_torch_release_warns_once_and_falls_back():
    require("cpp", "cpu")
    report = _report('import torch\ntorch.__version__ = "2.0.1+cpu"')
    _assert_one_line_rebuild_warning(
        report, f"compiled against torch {torch.__version__.split('+')[0]} but torch 2.0.1+cpu")


def test_undefined_symbol_reads_as_another_torch():
    """What loading a library built for another torch ABI raises (an unresolved C++
    symbol of libtorch), simulated by an import hook."""
    report = _report("""
        import importlib.abc, sys

        class AnotherTorchBuild(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "plinio._C":
                    raise ImportError("plinio/_C.so: undefined symbol: _ZN3c104impl3cow7deleterEPv")

        sys.meta_path.insert(0, AnotherTorchBuild())
        """)
    _assert_one_line_rebuild_warning(report, "compiled against another torch than the installed")


def test_build_without_visible_torch_stops_with_one_line():
    """pip's default build isolation hides the installed torch: setup.py says at once to
    build without it."""
    proc = _python(textwrap.dedent("""
        import sys
        sys.modules["torch"] = None              # as inside an isolated build environment
        sys.argv = ["setup.py", "--version"]
        exec(compile(open("setup.py").read(), "setup.py", "exec"))
        """))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "torch cannot be imported here" in lines[0]
    assert "pip install --no-build-isolation ." in lines[0]


def test_isolated_build_cannot_fetch_another_torch():
    """torch is no build requirement: an isolated build gets none (and stops, see above)
    instead of downloading one to compile against."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[build-system]", 1)[1].split("\n[", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("requires ="))
    requires = ast.literal_eval(line.split("=", 1)[1].strip())
    assert "setuptools>=77" in requires
    assert not any(r.replace(" ", "").lower().startswith("torch") for r in requires), requires
