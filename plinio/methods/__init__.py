"""DNAS methods: the ``DNAS`` base class and the ``PIT`` and ``PITSuperNet`` wrappers."""
from plinio.methods.dnas_base import DNAS
from plinio.methods.pit import PIT
from plinio.methods.pit_supernet import PITSuperNet

__all__ = ["DNAS", "PIT", "PITSuperNet"]
