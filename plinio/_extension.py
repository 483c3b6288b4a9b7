"""Lazy loader of the compiled op library ``plinio._C``.

Importing plinio must work without a usable compiled extension (a source checkout that was
not built, a failed build, or a library compiled against another torch release, which
shows up as an undefined symbol or as a different ``plinio._C.torch_version()``): then the
pure-PyTorch reference kernels are used and a one-line warning says why and how to
rebuild. The library is loaded on first use, not at ``import plinio``.
"""
import importlib
import re
import threading
import warnings
from typing import Optional

import torch

REBUILD_COMMAND = "pip install --no-build-isolation -e ."

_lock = threading.Lock()
_loaded: Optional[bool] = None
_error: Optional[str] = None


def torch_release(version: str) -> str:
    """The major.minor.patch part of a torch version string ('2.13.0' of '2.13.0+cpu')."""
    match = re.match(r"\d+\.\d+\.\d+", version)
    return match.group(0) if match else version


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _why_unusable() -> Optional[str]:
    """Import ``plinio._C``; None when it loaded and matches the running torch, else why
    it cannot be used."""
    try:
        ext = importlib.import_module("plinio._C")
    except ImportError as exc:
        if "undefined symbol" in str(exc):
            return (f"it was compiled against another torch than the installed "
                    f"{torch.__version__} ({_one_line(exc)})")
        return f"it is not built ({_one_line(exc)})"
    built = getattr(ext, "torch_version", None)
    if built is None:
        return "it was compiled by an older plinio (it has no torch_version())"
    if built() != torch_release(torch.__version__):
        return (f"it was compiled against torch {built()} but torch {torch.__version__} "
                "is installed")
    return None


def load() -> bool:
    """Import ``plinio._C`` once (registering ``torch.ops.plinio``); True when it loaded
    and was compiled against the running torch release."""
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            _error = _why_unusable()
            _loaded = _error is None
            if _error is not None:
                warnings.warn(
                    f"plinio: the compiled op library plinio._C cannot be used: {_error}; "
                    "using the pure-PyTorch reference kernels. Rebuild it with "
                    f"`{REBUILD_COMMAND}`.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return bool(_loaded)


def load_error() -> Optional[str]:
    """Why the compiled library cannot be used (None when it loaded or was not tried)."""
    return _error
