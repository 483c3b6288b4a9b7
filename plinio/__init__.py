"""plinio: a fast, drop-in implementation of PLiNIO's PIT and PIT-SuperNet DNAS methods."""

__version__ = "0.1.0"
