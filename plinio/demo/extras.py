"""The demo's optional packages (plinio's ``demo`` extra) and the check that they import.

plinio itself needs only torch and numpy; the demo also needs scikit-learn (the data),
matplotlib (the plot), tqdm (progress bars) and onnx / onnxruntime / onnxscript (the ONNX
export and its check). They are imported before the run starts, so that a missing one is
reported in one line instead of a traceback, possibly minutes into the run.
"""
from importlib import import_module
from typing import Dict, Optional

# import name -> package name, the ``demo`` extra of pyproject.toml
DEMO_PACKAGES: Dict[str, str] = {
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxscript": "onnxscript",
}

INSTALL_HINT = ('install the demo extras: pip install "plinio[demo]" (from a checkout: '
                'pip install --no-build-isolation -e ".[demo]")')


def missing_demo_package() -> Optional[str]:
    """``None`` if every demo package imports, else one line naming the first that does not."""
    for module, package in DEMO_PACKAGES.items():
        try:
            import_module(module)
        except ImportError as err:
            if isinstance(err, ModuleNotFoundError) and err.name == module:
                return f"the demo needs {package}, which is not installed; {INSTALL_HINT}"
            return (f"the demo needs {package}, which is installed but fails to import "
                    f"({' '.join(str(err).split())}); reinstall it or {INSTALL_HINT}")
    return None
