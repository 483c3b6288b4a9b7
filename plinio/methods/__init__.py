"""DNAS methods. Imported lazily so that each method only loads what it needs."""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "DNAS": "plinio.methods.dnas_base",
    "PIT": "plinio.methods.pit",
    "PITSuperNet": "plinio.methods.pit_supernet",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'plinio.methods' has no attribute {name!r}")
