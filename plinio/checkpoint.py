"""Save and resume a search: model, optimizers, schedulers and RNG state in one file.

A long architecture search must survive a crash and continue exactly where it stopped, so a
checkpoint holds everything that decides the next step: the model's ``state_dict()`` (weights,
architectural parameters and the search-state buffers such as the softmax temperature), the
optimizer and LR-scheduler states, and the random generators (torch CPU, CUDA, numpy, python).

A checkpoint is data, never code: it is read with ``torch.load(..., weights_only=True)`` and
fully validated against the target objects before any of them is modified. Writing goes
through a temporary file in the same folder that is fsync'ed and then atomically renamed, so a
crash while saving leaves the previous checkpoint intact.
"""
import os
import pickle
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

try:  # numpy is optional: its generator is saved only when it is installed.
    import numpy as np
except ImportError:  # pragma: no cover - numpy is a test dependency
    np = None

__all__ = [
    "CheckpointError",
    "StateDictMismatchError",
    "validate_state_dict",
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "get_rng_state",
    "set_rng_state",
]

FORMAT_TAG = "plinio.checkpoint"
FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]
Stateful = Any  # anything with state_dict() / load_state_dict() (optimizers, LR schedulers)
StatefulArg = Union[None, Stateful, Sequence[Stateful]]


class CheckpointError(ValueError):
    """A file that cannot be resumed from: unreadable, not a plinio checkpoint, or a
    checkpoint of a different model/optimizer setup. Raised before anything is modified."""


# --------------------------------------------------------------------------- helpers


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose state is saved: DDP and ``torch.compile`` wrappers only add a
    prefix to the keys, so checkpoints stay portable between wrapped and plain models."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel) or isinstance(
            model, nn.DataParallel
        ):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _as_list(objs: StatefulArg, what: str) -> List[Stateful]:
    """Accept one object, a sequence of them, or None; check each is checkpointable."""
    if objs is None:
        return []
    if isinstance(objs, (list, tuple)):
        items = list(objs)
    else:
        items = [objs]
    for i, obj in enumerate(items):
        if not (callable(getattr(obj, "state_dict", None))
                and callable(getattr(obj, "load_state_dict", None))):
            raise TypeError(
                f"{what}[{i}] is a {type(obj).__name__}, which has no state_dict()/"
                f"load_state_dict(); pass torch optimizers / LR schedulers only"
            )
    return items


_PLAIN_TYPES = (type(None), bool, int, float, str, torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """``extra`` must load under ``weights_only=True``: only plain data is allowed, so the
    error comes at save time (naming the entry) rather than at resume time."""
    if isinstance(value, _PLAIN_TYPES):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint entry {where} has a key of type "
                                f"{type(key).__name__}; use str or int keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"checkpoint entry {where} is a {type(value).__name__}; a checkpoint holds data only "
        f"(None, bool, int, float, str, tensors, and lists/tuples/dicts of them): convert it"
    )


# --------------------------------------------------------------------------- RNG state


def get_rng_state() -> Dict[str, Any]:
    """Snapshot of every random generator a search step may draw from (Gumbel noise,
    dropout, data shuffling), stored as plain tensors/ints so it loads with weights_only."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    version, internal, gauss_next = random.getstate()
    state["python"] = {"version": version, "state": list(internal), "gauss_next": gauss_next}
    return state


def _validate_rng_state(state: Any) -> None:
    if not isinstance(state, dict) or not isinstance(state.get("torch"), torch.Tensor):
        raise CheckpointError("the 'rng' entry is malformed (no torch CPU generator state)")
    if state["torch"].dtype != torch.uint8:
        raise CheckpointError("the 'rng' entry is malformed (torch state is not a uint8 tensor)")
    cuda = state.get("cuda", [])
    if not isinstance(cuda, list) or not all(isinstance(s, torch.Tensor) for s in cuda):
        raise CheckpointError("the 'rng' entry is malformed (CUDA states are not tensors)")
    numpy_state = state.get("numpy")
    if numpy_state is not None:
        if not isinstance(numpy_state, dict) or not isinstance(numpy_state.get("keys"),
                                                               torch.Tensor):
            raise CheckpointError("the 'rng' entry is malformed (numpy state)")
    python_state = state.get("python")
    if python_state is not None:
        if not isinstance(python_state, dict) or not isinstance(python_state.get("state"),
                                                                list):
            raise CheckpointError("the 'rng' entry is malformed (python random state)")


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a snapshot taken by :func:`get_rng_state` (the generators absent from this
    machine, e.g. CUDA on a CPU-only host, are skipped with a warning)."""
    _validate_rng_state(dict(state))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda", [])
    if cuda:
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            if count != len(cuda):
                warnings.warn(
                    f"checkpoint holds {len(cuda)} CUDA generator states but this machine "
                    f"has {count} GPUs; restoring the first {min(count, len(cuda))}",
                    stacklevel=2,
                )
            for index, cuda_state in enumerate(cuda[:count]):
                torch.cuda.set_rng_state(cuda_state, index)
        else:
            warnings.warn("checkpoint holds CUDA generator states but CUDA is not available "
                          "here; they are not restored", stacklevel=2)
    numpy_state = state.get("numpy")
    if numpy_state is not None and np is not None:
        np.random.set_state((
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        ))
    python_state = state.get("python")
    if python_state is not None:
        random.setstate((python_state["version"], tuple(python_state["state"]),
                         python_state["gauss_next"]))


# --------------------------------------------------------------------------- saving


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to a temporary sibling, flush it to disk, then rename it over ``path``:
    readers see either the old complete file or the new complete file, never a partial one."""
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX only)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizers: StatefulArg = None,
    schedulers: StatefulArg = None,
    extra: Optional[Mapping[str, Any]] = None,
    save_rng: bool = True,
) -> None:
    """Atomically save everything needed to resume a search bit-identically.

    ``model`` may be a ``PIT``/``PITSuperNet`` wrapper, a plain module, or either wrapped in
    DDP / ``torch.compile`` (the wrapper is removed so the keys do not depend on it).
    ``optimizers`` / ``schedulers``: one object or a sequence, restored in the same order.
    ``extra``: plain data of your own (step counter, best score, ...), returned by
    :func:`load_checkpoint`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_checkpoint: model must be an nn.Module, got "
                        f"{type(model).__name__}")
    opt_list = _as_list(optimizers, "optimizers")
    sched_list = _as_list(schedulers, "schedulers")
    extra_dict = dict(extra) if extra is not None else {}
    _check_plain(extra_dict, "extra")
    payload: Dict[str, Any] = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "model": _unwrap(model).state_dict(),
        "optimizers": [opt.state_dict() for opt in opt_list],
        "schedulers": [sched.state_dict() for sched in sched_list],
        "rng": get_rng_state() if save_rng else None,
        "extra": extra_dict,
    }
    target = Path(os.fspath(path))
    if target.is_dir():
        raise IsADirectoryError(f"save_checkpoint: {target} is a folder; give a file name")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"save_checkpoint: folder {target.parent} does not exist")
    _atomic_torch_save(payload, target)


# --------------------------------------------------------------------------- loading


def _describe_load_failure(exc: Exception) -> str:
    """Explain a torch.load failure without echoing torch's hint to retry with
    weights_only=False, which is exactly what must not be done with an untrusted file."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?:\. |\n|$)", text)
        found = f" ({detail.group(1).strip()})" if detail else ""
        return (f"it is not made of tensors and plain data only{found}: it is corrupted, or it "
                f"holds objects that could carry code, which are refused (checkpoints are "
                f"read with weights_only=True)")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return (f"the file is truncated, corrupted, or was not written by "
            f"plinio.checkpoint.save_checkpoint ({type(exc).__name__}: {first})")


def _read(path: Path) -> Dict[str, Any]:
    """Load with the restricted unpickler and turn every failure into one clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/EOF errors all mean the same thing to the user
        raise CheckpointError(f"{path} is not a readable plinio checkpoint: "
                              f"{_describe_load_failure(exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise CheckpointError(
            f"{path} is not a plinio checkpoint (no '{FORMAT_TAG}' format tag); save it "
            f"with plinio.checkpoint.save_checkpoint, or load a bare state_dict with "
            f"model.load_state_dict(torch.load(path, weights_only=True))"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this plinio reads versions "
            f"1..{FORMAT_VERSION}: upgrade plinio to read it"
        )
    for key, kind in (("model", dict), ("optimizers", list), ("schedulers", list),
                      ("extra", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path} is malformed: entry '{key}' is not a {kind.__name__}")
    return payload


def _shape_of(value: Any) -> Optional[Tuple[int, ...]]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


class StateDictMismatchError(CheckpointError, RuntimeError):
    """A state_dict that does not fit the module it is loaded into. Also a RuntimeError, the
    type ``nn.Module.load_state_dict`` raises, so existing ``except`` clauses still work."""


def validate_state_dict(module: nn.Module, state_dict: Mapping[str, Any],
                        source: str = "the state_dict") -> None:
    """Check that ``state_dict`` has exactly ``module``'s keys with the same tensor shapes,
    raising :class:`StateDictMismatchError` naming the first difference.

    ``nn.Module.load_state_dict`` copies every matching entry before it reports the bad
    ones, so a failed load leaves a half-loaded model; calling this first keeps a failed
    load free of side effects.
    """
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise StateDictMismatchError(
                f"{source} does not match {type(module).__name__}: key '{key}' of the model is "
                f"missing from it (was it saved from a different architecture or with "
                f"different PIT/PITSuperNet options?)"
            )
        want, got = _shape_of(value), _shape_of(state_dict[key])
        if want != got:
            raise StateDictMismatchError(
                f"{source} does not match {type(module).__name__}: key '{key}' has shape {got} "
                f"in {source} but {want} in the model (different layer widths?)"
            )
    for key in state_dict:
        if key not in expected:
            raise StateDictMismatchError(
                f"{source} does not match {type(module).__name__}: {source} has key '{key}' "
                f"that the model does not have (was it saved from a different architecture?)"
            )


def _validate_optimizer_state(saved: Any, optimizer: Any, index: int, path: Path) -> None:
    """Optimizer.load_state_dict checks group sizes itself, but may have started mutating by
    then; repeating the structural checks here keeps a failed load side-effect free."""
    current = optimizer.state_dict()
    if not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list):
        raise CheckpointError(f"{path}: optimizers[{index}] state is malformed")
    groups, saved_groups = current["param_groups"], saved["param_groups"]
    if len(groups) != len(saved_groups):
        raise CheckpointError(
            f"{path}: optimizers[{index}] has {len(groups)} parameter groups but the "
            f"checkpoint has {len(saved_groups)}; build the optimizer as when it was saved"
        )
    for g, (group, saved_group) in enumerate(zip(groups, saved_groups)):
        count = len(group["params"])
        saved_count = len(saved_group.get("params", ())) if isinstance(saved_group, dict) else -1
        if count != saved_count:
            raise CheckpointError(
                f"{path}: optimizers[{index}] group {g} has {count} parameters but the "
                f"checkpoint has {saved_count}; build the optimizer as when it was saved"
            )
    if not isinstance(saved.get("state"), dict):
        raise CheckpointError(f"{path}: optimizers[{index}] state is malformed")


def load_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizers: StatefulArg = None,
    schedulers: StatefulArg = None,
    restore_rng: bool = True,
) -> Dict[str, Any]:
    """Resume from a file written by :func:`save_checkpoint`; returns its ``extra`` dict.

    The file is read with ``weights_only=True`` and checked against ``model`` (every key and
    shape), the optimizers and the schedulers before any of them changes; on any error the
    objects are left exactly as they were. Tensors are loaded on CPU and copied into the
    model's own tensors, so the model keeps its device.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_checkpoint: model must be an nn.Module, got "
                        f"{type(model).__name__}")
    source = Path(os.fspath(path))
    opt_list = _as_list(optimizers, "optimizers")
    sched_list = _as_list(schedulers, "schedulers")
    payload = _read(source)
    target = _unwrap(model)

    validate_state_dict(target, payload["model"], source=f"checkpoint {source}")
    for what, objs in (("optimizers", opt_list), ("schedulers", sched_list)):
        if len(payload[what]) != len(objs):
            raise CheckpointError(
                f"{source} holds {len(payload[what])} {what} but {len(objs)} were given; "
                f"pass the same {what} as to save_checkpoint"
            )
    for index, (opt, saved) in enumerate(zip(opt_list, payload["optimizers"])):
        _validate_optimizer_state(saved, opt, index, source)
    for index, saved in enumerate(payload["schedulers"]):
        if not isinstance(saved, dict):
            raise CheckpointError(f"{source}: schedulers[{index}] state is malformed")
    rng = payload.get("rng")
    if restore_rng:
        if rng is None:
            raise CheckpointError(f"{source} was saved with save_rng=False; pass "
                                  f"restore_rng=False to resume without RNG state")
        _validate_rng_state(rng)

    target.load_state_dict(payload["model"], strict=True)
    for opt, saved in zip(opt_list, payload["optimizers"]):
        opt.load_state_dict(saved)
    for sched, saved in zip(sched_list, payload["schedulers"]):
        sched.load_state_dict(saved)
    if restore_rng:
        set_rng_state(rng)
    return payload["extra"]
