"""Validation of the on/off switches of a search (``hard``, ``train_*``, ``fast``, ...).

``bool("no")`` and ``bool(2)`` are True, so a switch set from a string or an int would
silently do something else than meant: only booleans are accepted (Python's ``bool`` and
numpy's ``bool_``, e.g. the result of a numpy comparison).
"""
import sys
from typing import Any


def is_bool(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy boolean."""
    if isinstance(value, bool):
        return True
    numpy = sys.modules.get("numpy")  # a numpy boolean implies that numpy is imported
    return numpy is not None and isinstance(value, numpy.bool_)


def checked_switch(owner: str, name: str, value: Any) -> bool:
    """``value`` as a bool, or TypeError naming ``owner``'s argument ``name``."""
    if not is_bool(value):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)
