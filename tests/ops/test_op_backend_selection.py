"""Backend selection (PLINIO_BACKEND / set_backend) and imports without the optional parts."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import plinio.ops as ops
from ops_backends import require

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (imports start from scratch) at the repo root."""
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=300)


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv("PLINIO_BACKEND", "reference")
    assert ops.get_backend("cpu") == "reference"
    monkeypatch.setenv("PLINIO_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="'cuda' was forced .* CUDA tensors only"):
        ops.get_backend("cpu")
    with pytest.raises(RuntimeError, match="'cuda' was forced"):
        ops.combine([torch.ones(2)], torch.ones(1))
    monkeypatch.setenv("PLINIO_BACKEND", "fastest")
    with pytest.raises(ValueError, match="not a plinio backend"):
        ops.get_backend("cpu")


def test_set_backend_overrides_env_and_validates(monkeypatch):
    monkeypatch.setenv("PLINIO_BACKEND", "cuda")
    ops.set_backend("reference")
    try:
        assert ops.get_backend("cpu") == "reference"
    finally:
        ops.set_backend(None)
    with pytest.raises(ValueError, match="unknown backend"):
        ops.set_backend("numpy")


def test_reference_path_forced_follows_set_backend_then_env(monkeypatch):
    monkeypatch.delenv("PLINIO_BACKEND", raising=False)
    assert ops.reference_path_forced() is False
    monkeypatch.setenv("PLINIO_BACKEND", "reference")
    assert ops.reference_path_forced() is True
    ops.set_backend("cpp")                   # set_backend wins over the variable
    try:
        assert ops.reference_path_forced() is False
        monkeypatch.setenv("PLINIO_BACKEND", "cpp")
        ops.set_backend("reference")
        assert ops.reference_path_forced() is True
    finally:
        ops.set_backend(None)
    assert ops.reference_path_forced() is False
    monkeypatch.setenv("PLINIO_BACKEND", "fastest")
    with pytest.raises(ValueError, match="not a plinio backend"):
        ops.reference_path_forced()


def test_automatic_choice_on_cpu(monkeypatch):
    monkeypatch.delenv("PLINIO_BACKEND", raising=False)
    require("cpp", "cpu")
    assert ops.get_backend("cpu") == "cpp"
    assert {"reference", "cpp"} <= set(ops.available_backends("cpu"))


@pytest.mark.gpu
def test_automatic_choice_on_cuda(monkeypatch):
    """CUDA tensors use the compiled CUDA kernels when built (their launches are cheaper
    than Triton's on search-sized tensors), else Triton."""
    monkeypatch.delenv("PLINIO_BACKEND", raising=False)
    available = ops.available_backends("cuda")
    if "cuda" not in available and "triton" not in available:
        pytest.skip("neither the CUDA kernels nor Triton can run here")
    assert ops.get_backend("cuda") == ("cuda" if "cuda" in available else "triton")


def test_forced_backend_is_really_used(monkeypatch):
    """The forced backend is the one that runs: its autograd node shows up in the graph."""
    require("cpp", "cpu")
    ys, theta = [torch.ones(3, requires_grad=True)], torch.ones(1, requires_grad=True)
    monkeypatch.setenv("PLINIO_BACKEND", "cpp")
    assert "CombineFunction" in ops.combine(ys, theta).grad_fn.name()
    monkeypatch.setenv("PLINIO_BACKEND", "reference")
    assert ops.combine(ys, theta).grad_fn.name() == "SumBackward1"


def test_forced_cpp_without_extension_is_a_clear_error():
    proc = _run("""
        import sys, warnings
        sys.modules["plinio._C"] = None          # as if the extension had not been built
        import torch
        import plinio.ops as ops
        try:
            ops.combine([torch.ones(2)], torch.ones(1))
        except RuntimeError as e:
            print("ERR", e)
        """, PLINIO_BACKEND="cpp")
    assert proc.returncode == 0, proc.stderr
    assert "ERR plinio.ops: backend 'cpp' was forced" in proc.stdout
    assert "not available" in proc.stdout


def test_import_works_without_extension_with_one_warning():
    proc = _run("""
        import sys, warnings
        sys.modules["plinio._C"] = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch
            import plinio, plinio.ops as ops
            y = ops.combine([torch.ones(2), torch.ones(2)], torch.tensor([0.25, 0.5]))
            m = ops.pit_masked_weight(torch.ones(2, 3), None, torch.tensor([0.1, 0.9]))
            ops.combine([torch.ones(2)], torch.ones(1))
        ours = [w for w in caught if "plinio._C" in str(w.message)]
        print(len(ours), ops.get_backend("cpu"), y.tolist(), m[0].tolist())
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["1", "reference"]
    assert "[0.75, 0.75]" in proc.stdout and "[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]" in proc.stdout


def test_import_works_without_triton():
    proc = _run("""
        import sys
        sys.modules["triton"] = None             # as if triton were not installed
        import torch
        import plinio.ops as ops
        assert "triton" not in ops.available_backends("cpu")
        print(ops.combine([torch.ones(2)], torch.ones(1)).tolist())
        try:
            ops.set_backend("triton"); ops.combine([torch.ones(2)], torch.ones(1))
        except RuntimeError as e:
            print("ERR", e)
        """, TRITON_INTERPRET="1")
    assert proc.returncode == 0, proc.stderr
    assert "[1.0, 1.0]" in proc.stdout
    assert "triton is not installed" in proc.stdout


def test_importing_plinio_does_not_load_the_extension():
    proc = _run("""
        import sys
        import plinio, plinio.ops
        print("plinio._C" in sys.modules)
        """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]
