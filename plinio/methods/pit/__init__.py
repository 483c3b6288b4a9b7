"""PIT: channel, receptive-field and dilation search.

``PIT`` is loaded lazily so that the layers (``plinio.methods.pit.nn``) can be imported by
the graph engine and the cost model without importing the wrapper that uses them.
"""
from importlib import import_module
from typing import Any

__all__ = ["PIT"]


def __getattr__(name: str) -> Any:
    if name == "PIT":
        return import_module("plinio.methods.pit.pit").PIT
    raise AttributeError(f"module 'plinio.methods.pit' has no attribute {name!r}")
