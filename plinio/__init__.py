"""plinio: a fast, drop-in implementation of PLiNIO's PIT and PIT-SuperNet DNAS methods."""
# The compiled op library plinio._C links against torch's shared libraries, which importing
# torch loads: importing it here lets `import plinio._C` work on its own.
import torch  # noqa: F401

__version__ = "0.1.0"
