"""Building and loading plinio._C: a build that cannot see the installed torch stops at
once, and a library compiled against another torch release gives one warning line (with
the rebuild command) instead of a crash, and is not used.

(`import plinio._C` as a first import: test_op_double_backward.py; the reference kernels
taking over when the library is unusable: test_op_backend_selection.py.)"""
import ast
import importlib
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from plinio import _extension
from ops_backends import require

ROOT = Path(__file__).resolve().parents[2]


def _load_afresh(monkeypatch: pytest.MonkeyPatch):
    """Run the loader as on first use (its state is restored after the test): (whether
    the library is used, the messages of its warnings)."""
    monkeypatch.setattr(_extension, "_loaded", None)
    monkeypatch.setattr(_extension, "_error", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = _extension.load()
    return used, [str(w.message) for w in caught if "plinio._C" in str(w.message)]


def _assert_one_line_rebuild_warning(messages, why: str) -> None:
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    assert why in messages[0] and "`pip install --no-build-isolation -e .`" in messages[0]


def test_library_records_the_torch_it_was_built_against(monkeypatch):
    require("cpp", "cpu")
    import plinio._C as ext

    assert ext.torch_version() == _extension.torch_release(torch.__version__)
    assert _extension.torch_release("2.14.0a0+git1234") == "2.14.0"
    assert _load_afresh(monkeypatch) == (True, [])


def test_library_of_another_torch_release_warns_once_and_is_not_used(monkeypatch):
    require("cpp", "cpu")
    built = _extension.torch_release(torch.__version__)
    monkeypatch.setattr(torch, "__version__", "2.0.1+cpu")
    used, messages = _load_afresh(monkeypatch)
    assert not used
    _assert_one_line_rebuild_warning(
        messages, f"compiled against torch {built} but torch 2.0.1+cpu is installed")


def test_undefined_symbol_reads_as_another_torch(monkeypatch):
    """What loading a library built for another torch ABI raises: an unresolved C++ symbol
    of libtorch."""
    def import_module(name, *args):
        if name == "plinio._C":
            raise ImportError("plinio/_C.so: undefined symbol: _ZN3c104impl3cow7deleterEPv")
        return importlib.import_module(name, *args)

    monkeypatch.setattr(_extension.importlib, "import_module", import_module)
    used, messages = _load_afresh(monkeypatch)
    assert not used
    _assert_one_line_rebuild_warning(messages, "compiled against another torch than the installed")


def test_build_without_visible_torch_stops_with_one_line():
    """pip's default build isolation hides the installed torch: setup.py says at once to
    build without it."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None              # as inside an isolated build environment
        sys.argv = ["setup.py", "--version"]
        exec(compile(open("setup.py").read(), "setup.py", "exec"))
        """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
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
