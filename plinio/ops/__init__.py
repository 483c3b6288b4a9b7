"""plinio's op library: the two hot-path ops of a PIT / PIT-SuperNet search.

- :func:`combine` — y = Σ_i θ_i·y_i over supernet branches, without a stacked buffer
  (optionally with a ReLU on chosen branches, fused into the sum by the CPU kernels).
- :func:`pit_masked_weight` — a layer's weight (and bias) with its binarized PIT masks
  applied, in one kernel; :func:`pit_masks` gives the masks alone.

Besides, :func:`relu` and :func:`dropout` are ReLU / ReLU6 and training-mode dropout whose
C++ backend (plinio/ops/activations.py) makes none of the bool masks that inductor's CPU code
handles slowly: the fast path runs its activations through them while torch.compile traces it
on the CPU.

Each op has four implementations: ``reference`` (pure PyTorch), ``cpp`` (the compiled
extension: CPU kernels, and CUDA kernels when built with CUDA), ``cuda`` (the compiled
CUDA kernels only) and ``triton``. By default CUDA tensors use the compiled CUDA kernels
when the extension has them (else Triton, else the reference): on small search tensors
Triton's per-launch host cost outweighs its kernels (bench/RESULTS.md). CPU tensors use
the C++ kernels when the extension is built (else the reference).
``PLINIO_BACKEND=<name>`` or :func:`set_backend` forces one; a forced backend that cannot
run raises RuntimeError.
"""
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _extension
from . import _library, _validate, activations, reference

__all__ = ["combine", "pit_masks", "pit_masked_weight", "relu", "dropout", "set_backend",
           "get_backend", "available_backends", "reference_path_forced", "BACKENDS"]

BACKENDS = ("reference", "cpp", "cuda", "triton")
_ENV = "PLINIO_BACKEND"
_forced: Optional[str] = None


def set_backend(name: Optional[str]) -> None:
    """Force a backend for every op (None: automatic choice, honouring PLINIO_BACKEND)."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"plinio.ops.set_backend: unknown backend {name!r}; "
                         f"choose one of {', '.join(BACKENDS)} or None")
    _forced = name


def _requested() -> Optional[str]:
    if _forced is not None:
        return _forced
    env = os.environ.get(_ENV, "").strip().lower()
    if not env:
        return None
    if env not in BACKENDS:
        raise ValueError(f"{_ENV}={env!r} is not a plinio backend; "
                         f"use one of {', '.join(BACKENDS)} (or unset it)")
    return env


# Like _select, evaluated once while torch.compile traces (it reads the environment).
@torch.compiler.assume_constant_result
def reference_path_forced() -> bool:
    """True when the reference backend is forced (``set_backend('reference')``, else
    ``PLINIO_BACKEND=reference``): callers then take their pure-PyTorch path too."""
    return _requested() == "reference"


def _triton_usable(device_type: str) -> Tuple[bool, str]:
    from . import triton as triton_backend

    return triton_backend.usable(device_type)


def _unavailable_reason(name: str, device_type: str) -> Optional[str]:
    """None when backend `name` can run on `device_type` tensors, else why not."""
    if name == "reference":
        return None
    if name in ("cpp", "cuda"):
        if _library.compiled_ops() is None:
            return (f"the compiled extension plinio._C is not available: "
                    f"{_extension.load_error()}; build it with `{_extension.REBUILD_COMMAND}`")
        if name == "cuda" and device_type != "cuda":
            return f"it runs on CUDA tensors only, got {device_type} tensors"
        if not _library.compiled_has_device(device_type):
            return (f"plinio._C was built without {device_type.upper()} kernels "
                    "(rebuild with FORCE_CUDA=1 for CUDA)")
        return None
    ok, why = _triton_usable(device_type)
    return None if ok else why


def get_backend(device: Union[torch.device, str] = "cpu") -> str:
    """The backend the ops use for tensors on `device` (raises if a forced one can't run)."""
    return _select(torch.device(device).type)


# torch.compile evaluates the choice once while tracing (it queries the dispatcher and the
# environment, which Dynamo cannot trace) and bakes it into the graph.
@torch.compiler.assume_constant_result
def _select(device_type: str) -> str:
    wanted = _requested()
    if wanted is not None:
        why = _unavailable_reason(wanted, device_type)
        if why is not None:
            raise RuntimeError(f"plinio.ops: backend {wanted!r} was forced (PLINIO_BACKEND or "
                               f"set_backend) but cannot run: {why}")
        return _loaded(wanted)
    order = ("cuda", "triton", "reference") if device_type == "cuda" else ("cpp", "reference")
    for name in order:
        if _unavailable_reason(name, device_type) is None:
            return _loaded(name)
    return "reference"


def _loaded(name: str) -> str:
    """Define the Triton ops on first choice: ``_select`` runs eagerly even under
    torch.compile, where defining them inside the traced code would break the graph."""
    if name == "triton":
        _ops_for(name)
    return name


def available_backends(device: Union[torch.device, str] = "cpu") -> List[str]:
    """Every backend that can run on tensors of `device` (for tests and benchmarks)."""
    device_type = torch.device(device).type
    return [b for b in BACKENDS if _unavailable_reason(b, device_type) is None]


def _ops_for(backend: str):  # noqa: ANN202 - returns torch.ops namespace or triton ops
    if backend == "triton":
        from . import triton as triton_backend

        return triton_backend.ops()
    return _library.compiled_ops()


def combine(branches: Sequence[Tensor], theta: Tensor,
            relu: Optional[Sequence[bool]] = None) -> Tensor:
    """y = Σ_i theta[i]·r_i(branches[i]), differentiable w.r.t. every branch and theta
    (twice too: ``create_graph=True`` works); r_i is ReLU where ``relu[i]`` (one flag per
    branch), the identity otherwise.

    Dtypes follow Σ_i θ[i]·y_i in eager PyTorch, under autocast or not: the result has the
    branches' dtype, branches of different floating dtypes (a bfloat16 conv output beside
    a float32 identity under autocast) being promoted to the widest; θ, in any floating
    dtype, does not change it. The sum accumulates in float32 (float64 for float64) and
    each gradient has its input's dtype. The result has the first branch's memory layout.
    The fused kernels keep no stacked copy: the backward reads the saved branches only for
    θ's gradient and the ReLU masks. The CPU kernels apply the ReLU inside the sum (no
    separate activation tensor, forward or backward); on other backends it runs as
    ``torch.relu`` before the fused sum.
    """
    _validate.check_combine(branches, theta, relu)
    if any(b.dtype != branches[0].dtype for b in branches):
        dtype = reference.branches_dtype(branches)
        branches = [b.to(dtype) for b in branches]
    device_type = branches[0].device.type
    backend = _select(device_type)
    flags = [bool(r) for r in relu] if relu is not None else []
    if backend == "cpp" and device_type == "cpu":
        return _ops_for(backend).combine(list(branches), theta, flags)
    if flags:
        branches = [torch.relu(b) if r else b for b, r in zip(branches, flags)]
    if backend == "reference":
        return reference.combine(branches, theta)
    return _ops_for(backend).combine(list(branches), theta)


def relu(x: Tensor, upper: Optional[float] = None) -> Tensor:
    """``torch.relu(x)`` (``upper`` None) or ``F.hardtanh(x, 0, upper)`` (ReLU6: ``upper=6``):
    the same values and gradients (0 where x ≤ 0 or x ≥ upper, as PyTorch's backward gives at
    the kinks). With the C++ backend on CPU tensors, the backward is one op reading the output
    instead of a bool mask (plinio/ops/activations.py)."""
    if upper is not None and not upper > 0:
        raise ValueError(f"plinio.ops.relu: upper must be positive (the output is clamped to "
                         f"[0, upper]), got {upper}")
    if x.device.type == "cpu" and _select("cpu") == "cpp":
        return activations.relu_saving_output(x, upper)
    return torch.relu(x) if upper is None else F.hardtanh(x, 0.0, upper)


def dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode ``F.dropout(x, p)``. With the C++ backend on CPU tensors, the same noise
    from the same generator times ``x``, without a bool mask (plinio/ops/activations.py)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"plinio.ops.dropout: p must be in [0, 1], got {p}")
    if 0.0 < p < 1.0 and x.numel() > 0 and x.device.type == "cpu" and _select("cpu") == "cpp":
        return activations.dropout_from_noise(x, p)
    return F.dropout(x, p, training=True)


def pit_masks(
    alpha: Optional[Tensor],
    beta: Optional[Tensor] = None,
    gamma: Optional[Tensor] = None,
    *,
    kernel_size: Optional[int] = None,
    threshold: float = 0.5,
    keep_alive: int = 1,
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Binarized PIT masks (docs/behaviour.md §5.1): (channel mask [Cout] or None, time mask
    [K] or None).

    Values are exact 0./1. in the parameters' dtype, the same with or without autocast;
    gradients flow to alpha / beta / gamma through the straight-through estimator, to any
    order. `kernel_size` is needed only when gamma
    is given without beta. Pass a frozen parameter detached.
    """
    if beta is not None and kernel_size is None:
        kernel_size = int(beta.shape[0])
    _validate.check_mask_params("plinio.ops.pit_masks", alpha, beta, gamma, None, kernel_size,
                                keep_alive)
    like = alpha if alpha is not None else (beta if beta is not None else gamma)
    if like is None:
        return None, None
    backend = _select(like.device.type)
    if backend == "reference":
        return reference.pit_masks(alpha, beta, gamma, kernel_size=kernel_size,
                                   threshold=threshold, keep_alive=keep_alive)
    channel, time = _ops_for(backend).pit_masks(alpha, beta, gamma, int(kernel_size or 1),
                                                float(threshold), int(keep_alive))
    return (channel if alpha is not None else None,
            time if (beta is not None or gamma is not None) else None)


def pit_masked_weight(
    weight: Tensor,
    bias: Optional[Tensor],
    alpha: Optional[Tensor],
    beta: Optional[Tensor] = None,
    gamma: Optional[Tensor] = None,
    *,
    threshold: float = 0.5,
    keep_alive: int = 1,
    return_masks: bool = False,
) -> Union[Tuple[Tensor, Optional[Tensor]],
           Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]]:
    """A layer's weight (and bias) with its binarized PIT masks applied, in one kernel.

    `weight` is a Linear (Cout, Cin), Conv1d (Cout, Cin/g, K) or Conv2d (Cout, Cin/g, kh, kw)
    weight; alpha masks output channels (weight rows and bias), beta/gamma (Conv1d only)
    mask kernel taps. Returns (masked_weight, masked_bias or None), plus the channel and
    time masks when `return_masks`. The backward applies the straight-through estimator and
    reduces the weight/bias gradient into alpha/beta/gamma gradients in the same pass;
    second derivatives (``create_graph=True``) work too.

    Dtypes: the masked weight and bias keep the weight's dtype and the masks have the mask
    parameters' (which may differ from the weight's, e.g. float32 parameters beside a
    bfloat16 weight: the op then runs in the wider dtype, exactly, since the masks are
    0./1.); autocast changes neither. Each gradient has its input's dtype.
    """
    _validate.check_masked_weight(weight, bias, alpha, beta, gamma, keep_alive)
    params_dtype = next((p.dtype for p in (alpha, beta, gamma) if p is not None), weight.dtype)
    if params_dtype != weight.dtype:
        outputs = _masked_weight_in_wider_dtype(weight, bias, (alpha, beta, gamma), threshold,
                                                keep_alive)
        return outputs if return_masks else outputs[:2]
    backend = _select(weight.device.type)
    if backend == "cpp" and weight.device.type == "cpu" and torch.compiler.is_compiling():
        w, b, channel, time = _masked_weight_in_graph(weight, bias, alpha, beta, gamma, threshold,
                                                      keep_alive)
    elif backend == "reference":
        w, b, channel, time = reference.pit_masked_weight(
            weight, bias, alpha, beta, gamma, threshold=threshold, keep_alive=keep_alive)
    else:
        w, b, channel, time = _ops_for(backend).pit_masked_weight(
            weight, bias, alpha, beta, gamma, float(threshold), int(keep_alive))
        b = b if bias is not None else None
        channel = channel if alpha is not None else None
        time = time if (beta is not None or gamma is not None) else None
    if return_masks:
        return w, b, channel, time
    return w, b


def _masked_weight_in_graph(
        weight: Tensor, bias: Optional[Tensor], alpha: Optional[Tensor], beta: Optional[Tensor],
        gamma: Optional[Tensor], threshold: float, keep_alive: int,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """pit_masked_weight while torch.compile traces a CPU graph: the masks from
    :func:`pit_masks`, their product with the weight and bias left to the graph. Inductor runs
    its CPU convolutions channels_last; it then computes the masked weight in that layout in
    one kernel (and the weight's gradient, and the masks' gradient Σ grad·weight, in the layout
    the convolution's backward gives), where the fused op's result and gradients would each be
    converted. Same values (the masks are exact 0./1.); the mask parameters' gradients are
    summed by inductor instead of the fused kernel (float rounding apart, the same)."""
    taps = int(weight.shape[-1]) if beta is not None or gamma is not None else None
    channel, time = pit_masks(alpha, beta, gamma, kernel_size=taps, threshold=threshold,
                              keep_alive=keep_alive)
    w, b = weight, bias
    if channel is not None:
        w = w * channel.view((-1,) + (1,) * (weight.dim() - 1))
        b = b * channel if b is not None else None
    if time is not None:
        w = w * time
    return w, b, channel, time


def _masked_weight_in_wider_dtype(
        weight: Tensor, bias: Optional[Tensor], params: Sequence[Optional[Tensor]],
        threshold: float, keep_alive: int,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """pit_masked_weight for mask parameters in another dtype than the weight: run in the
    wider of the two (exact: the masks are 0./1.), then give the masked weight and bias
    the weight's dtype and the masks the parameters' (every cast is differentiable)."""
    params_dtype = next(p.dtype for p in params if p is not None)
    wide = torch.promote_types(weight.dtype, params_dtype)
    w, b, channel, time = pit_masked_weight(
        weight.to(wide), _cast(bias, wide), *(_cast(p, wide) for p in params),
        threshold=threshold, keep_alive=keep_alive, return_masks=True)
    return (w.to(weight.dtype), _cast(b, weight.dtype), _cast(channel, params_dtype),
            _cast(time, params_dtype))


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """`t` in `dtype` (differentiable; no copy when it already is), None for None."""
    return t.to(dtype) if t is not None else None
