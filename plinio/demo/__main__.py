"""``python -m plinio.demo`` and the ``plinio-demo`` console script."""
import sys

from plinio.demo.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
