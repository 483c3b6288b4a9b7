"""Deployable files of an exported network and the check that they compute the same thing.

Each network is saved as a ``torch.export`` program (``.pt2``, reload with
``torch.export.load(path).module()``) and as ONNX (``.onnx``, made from that same program),
both with a dynamic batch dimension. Both files are then run on the test images, the
ONNX one with onnxruntime, and compared with the PyTorch model's outputs.
"""
import contextlib
import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from .config import DemoError

# outputs may differ by float rounding only: the export tolerance of docs/behaviour.md §6
RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportedFiles:
    """Paths of the saved files and the largest output difference of each vs PyTorch."""

    torch_export: Path
    onnx: Path
    torch_export_max_abs_diff: float
    onnx_max_abs_diff: float


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence the exporter's informational log lines and warnings for the demo's output."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def compare_outputs(name: str, path: Path, reference: torch.Tensor,
                    outputs: np.ndarray) -> float:
    """Max abs difference of ``outputs`` (from the file ``path``) vs PyTorch's ``reference``.

    Raises ``DemoError`` (exit code 1) when the shapes differ or the difference exceeds
    ``RELATIVE_TOLERANCE`` × max(1, max |reference|).
    """
    expected = reference.numpy()
    if outputs.shape != expected.shape:
        raise DemoError(f"{name} file {path} gives outputs of shape {outputs.shape}, PyTorch "
                        f"gives {expected.shape}", exit_code=1)
    diff = float(np.max(np.abs(outputs.astype(np.float64) - expected)))
    limit = RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(expected))))
    if not diff <= limit:
        raise DemoError(f"{name} file {path} does not reproduce PyTorch on the test split: "
                        f"max abs difference {diff:.3g} > tolerance {limit:.3g}", exit_code=1)
    return diff


def export_and_check(model: nn.Module, images: torch.Tensor, directory: Path,
                     stem: str) -> ExportedFiles:
    """Save ``model`` as ``<stem>.pt2`` and ``<stem>.onnx`` and verify both on ``images``.

    ``images`` is a batch of inputs (the test split). The model is copied to the CPU in
    eval mode; the caller's model is not changed.
    """
    import onnxruntime

    cpu_model = copy.deepcopy(model).to("cpu").eval()
    cpu_images = images.detach().to("cpu", torch.float32)
    directory.mkdir(parents=True, exist_ok=True)
    pt2_path = directory / f"{stem}.pt2"
    onnx_path = directory / f"{stem}.onnx"
    batch = torch.export.Dim("batch")
    example = (cpu_images[:2],)
    with torch.no_grad():
        reference = cpu_model(cpu_images)
    with _quiet_onnx_exporter():
        program = torch.export.export(cpu_model, example, dynamic_shapes=({0: batch},))
        torch.export.save(program, str(pt2_path))
        torch.onnx.export(program, example, str(onnx_path), input_names=["image"],
                          output_names=["logits"], dynamo=True, external_data=False,
                          verbose=False)

    with torch.no_grad():
        reloaded = torch.export.load(str(pt2_path)).module()(cpu_images)
    pt2_diff = compare_outputs("torch.export", pt2_path, reference, reloaded.numpy())

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (onnx_outputs,) = session.run(["logits"], {"image": cpu_images.numpy()})
    onnx_diff = compare_outputs("ONNX", onnx_path, reference, onnx_outputs)
    return ExportedFiles(torch_export=pt2_path, onnx=onnx_path,
                         torch_export_max_abs_diff=pt2_diff, onnx_max_abs_diff=onnx_diff)
