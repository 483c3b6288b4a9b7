"""The machine a run was measured on, recorded with its results.

Training results depend on floating-point rounding, which differs between CPU models (vector
instruction sets), thread counts and torch versions, so a table is only reproducible
together with these.
"""
import os
import platform
from typing import Dict, Union

import torch


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or the platform's description."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: str) -> Dict[str, Union[str, int]]:
    """CPU model, cores, torch threads, torch version and, on CUDA, the GPU's name."""
    info: Dict[str, Union[str, int]] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count() or 0,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe(info: Dict[str, Union[str, int]]) -> str:
    """One line: 'AMD EPYC, 2 threads, torch 2.13.0' (and the GPU when there is one)."""
    threads = info["threads"]
    text = f"{info['cpu']}, {threads} thread{'' if threads == 1 else 's'}, torch {info['torch']}"
    return f"{info['gpu']} + {text}" if "gpu" in info else text
