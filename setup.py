"""Build of plinio's compiled op library, plinio._C.

It is compiled against the torch installed in the environment, so it must be built without
build isolation (`pip install --no-build-isolation .`); where torch cannot be imported the
build stops at once with that advice. The CPU sources are always built (-O3, OpenMP when
torch was built with it). The CUDA sources are added when CUDA is usable here or
FORCE_CUDA=1 is set; the GPU architectures then come from TORCH_CUDA_ARCH_LIST (torch's own
convention). Project metadata lives in pyproject.toml.
"""
import glob
import os
from typing import Dict, List

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:
    # pip's default build isolation hides the installed torch (and pyproject.toml does not
    # list torch as a build requirement, so no other torch gets downloaded to build with)
    raise SystemExit(
        f"plinio: building plinio._C needs the torch it will run with, but torch cannot be "
        f"imported here ({exc}): install torch first, then build without build isolation: "
        "pip install --no-build-isolation .") from exc

ROOT = os.path.dirname(os.path.abspath(__file__))


def _relative_sources(pattern: str) -> List[str]:
    """Sources as paths relative to the project root (setuptools requires that)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda() -> bool:
    """Build the CUDA kernels when forced, or when a CUDA torch and toolkit are usable."""
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to "
                               "the toolkit root (the folder holding bin/nvcc)")
        if torch.version.cuda is None:
            raise RuntimeError("FORCE_CUDA=1 needs a CUDA build of torch; this torch is "
                               f"{torch.__version__}")
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _extension():
    cxx_flags = ["-O3"]
    link_flags: List[str] = []
    if torch.backends.openmp.is_available():
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    sources = _relative_sources("csrc/*.cpp") + _relative_sources("csrc/cpu/*.cpp")
    extra: Dict[str, List[str]] = {"cxx": cxx_flags}
    if _want_cuda():
        extra["nvcc"] = ["-O3"]
        return CUDAExtension("plinio._C", sources + _relative_sources("csrc/cuda/*.cu"),
                             extra_compile_args=extra, extra_link_args=link_flags)
    return CppExtension("plinio._C", sources, extra_compile_args=extra,
                        extra_link_args=link_flags)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
)
