"""The C++ CPU loops exist in two copies, baseline and AVX2+FMA, picked once per process
(csrc/cpu/cpu_loops.h); plinio::small_conv's loops have a third, AVX-512 copy
(csrc/cpu/small_conv_loops.h). The op tests run whichever copy this CPU picks; here the
baseline copy (and the AVX2 copy of the small convolution) is forced in a subprocess and must
pass the same C++ op tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import plinio.ops as ops

OPS_TESTS = Path(__file__).parent


def _compiled_module():
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    from plinio import _C
    return _C


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_copy_in_use_is_reported():
    ext = _compiled_module()
    assert ext.cpu_isa() in ("avx2", "base")
    assert ext.small_conv_isa() in ("avx512", "avx2", "base")
    assert (ext.small_conv_isa() == "base") == (ext.cpu_isa() == "base")


def test_environment_forces_the_baseline_copy():
    _compiled_module()
    result = _run("import torch; from plinio import _C; print(_C.cpu_isa())", PLINIO_CPU_ISA="base")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "base"
    result = _run("from plinio import _C; print(_C.cpu_isa(), _C.small_conv_isa())", PLINIO_CPU_ISA="base")
    assert result.stdout.split() == ["base", "base"]
    result = _run("from plinio import _C; print(_C.small_conv_isa())", PLINIO_CPU_ISA="avx2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() != "avx512"


def test_baseline_copy_passes_the_cpp_op_tests():
    _compiled_module()
    files = [str(OPS_TESTS / "test_op_combine.py"), str(OPS_TESTS / "test_op_pit_masks.py")]
    code = ("import sys, pytest, torch; from plinio import _C; assert _C.cpu_isa() == 'base'; "
            f"sys.exit(pytest.main({files!r} + ['-q', '-k', 'cpp-cpu', '-p', 'no:cacheprovider']))")
    result = _run(code, PLINIO_CPU_ISA="base")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_forced_copy_of_the_small_convolution_passes_its_tests(isa):
    ext = _compiled_module()
    if isa == "avx2" and ext.cpu_isa() != "avx2":
        pytest.skip("this CPU has no AVX2")
    file = str(OPS_TESTS / "test_op_small_conv.py")
    code = (f"import sys, pytest; from plinio import _C; assert _C.small_conv_isa() == {isa!r}; "
            f"sys.exit(pytest.main([{file!r}, '-q', '-p', 'no:cacheprovider']))")
    result = _run(code, PLINIO_CPU_ISA=isa)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
