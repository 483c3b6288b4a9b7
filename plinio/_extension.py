"""Lazy loader of the compiled op library ``plinio._C``.

Importing plinio must work without the compiled extension (a source checkout that was not
built, or a failed build): then the pure-PyTorch reference kernels are used and one
warning says why. The library is loaded on first use, not at ``import plinio``.
"""
import importlib
import threading
import warnings
from typing import Optional

_lock = threading.Lock()
_loaded: Optional[bool] = None
_error: Optional[BaseException] = None


def load() -> bool:
    """Import ``plinio._C`` once (registering ``torch.ops.plinio``); True when it loaded."""
    global _loaded, _error
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            try:
                importlib.import_module("torch")  # provides libc10/libtorch to the loader
                importlib.import_module("plinio._C")
                _loaded = True
            except ImportError as exc:  # not built, or built against another torch
                _error = exc
                _loaded = False
                warnings.warn(
                    "plinio: the compiled op library plinio._C is not available "
                    f"({exc}); using the pure-PyTorch reference kernels. Build it with "
                    "`pip install --no-build-isolation -e .`.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return bool(_loaded)


def available() -> bool:
    """Whether the compiled op library is (or can be) loaded."""
    return load()


def load_error() -> Optional[BaseException]:
    """Why the compiled library failed to load (None when it loaded or was not tried)."""
    return _error
