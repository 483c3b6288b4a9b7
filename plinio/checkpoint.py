"""Save and resume a search: model, optimizers, schedulers and RNG state in one file.

A long architecture search must survive a crash and continue exactly where it stopped, so a
checkpoint holds everything that decides the next step: the model's ``state_dict()`` (weights,
architectural parameters and the search-state buffers such as the softmax temperature), the
optimizer and LR-scheduler states, and the random generators (torch CPU, CUDA, numpy, python).

A checkpoint is data, never code: it is read with ``torch.load(..., weights_only=True)``
after the CRC-32 of every record of the file (which ``torch.save`` writes and ``torch.load``
ignores) is verified, and it is fully validated against the target objects (model keys and
shapes, optimizer groups and buffers, scheduler layout, each generator state applied to a
scratch generator) before any of them is modified. Writing goes through a temporary file in
the same folder that is fsync'ed and then atomically renamed, so a crash while saving leaves
the previous checkpoint intact.
"""
import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import (Any, BinaryIO, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import torch
from torch import nn

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

_MT_WORDS = 624  # 32-bit words of a Mersenne Twister state (numpy's legacy generator, random)
_WORD_LIMIT = 2 ** 32


def get_rng_state() -> Dict[str, Any]:
    """Snapshot of every random generator a search step may draw from (Gumbel noise,
    dropout, data shuffling), stored as plain tensors/ints so it loads with weights_only."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
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


def _rng_error(piece: str, problem: str) -> CheckpointError:
    return CheckpointError(f"the 'rng' entry is malformed: the {piece} generator state "
                           f"{problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_generator_tensor(value: Any, piece: str, device: str) -> torch.Tensor:
    """A torch generator state, proven valid by applying it to a scratch generator of the
    same kind (torch checks the size and the contents there, without touching the real one)."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
        raise _rng_error(piece, "is not a uint8 tensor")
    try:
        torch.Generator(device=device).set_state(value)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _rng_error(piece, f"is not valid here ({exc})") from None
    return value


def _checked_numpy_state(value: Any) -> Tuple[str, Any, int, int, float]:
    """numpy's legacy global generator state as ``np.random.set_state`` takes it.

    numpy accepts some invalid states silently (a position past the key), and the int64
    keys of the file would wrap when cast to uint32, so the fields are checked one by one
    before a scratch generator takes the tuple.
    """
    piece = "numpy"
    if not isinstance(value, dict):
        raise _rng_error(piece, "is not a dict")
    if value.get("kind") != "MT19937":
        raise _rng_error(piece, f"has kind {value.get('kind')!r}, expected 'MT19937'")
    keys = value.get("keys")
    if (not isinstance(keys, torch.Tensor) or keys.dtype.is_floating_point
            or keys.dtype.is_complex or keys.dtype == torch.bool):
        raise _rng_error(piece, "has no integer tensor of keys")
    if tuple(keys.shape) != (_MT_WORDS,):
        raise _rng_error(piece, f"has keys of shape {tuple(keys.shape)}, expected "
                                f"({_MT_WORDS},)")
    if bool((keys < 0).any()) or bool((keys >= _WORD_LIMIT).any()):
        raise _rng_error(piece, "has keys outside the 32-bit range")
    pos, has_gauss, cached = value.get("pos"), value.get("has_gauss"), value.get("cached_gaussian")
    if not _is_int(pos) or not 0 <= pos <= _MT_WORDS:
        raise _rng_error(piece, f"has position {pos!r}, expected an int in 0..{_MT_WORDS}")
    if has_gauss not in (0, 1) or isinstance(has_gauss, float):
        raise _rng_error(piece, f"has has_gauss {has_gauss!r}, expected 0 or 1")
    if not isinstance(cached, (int, float)) or isinstance(cached, bool):
        raise _rng_error(piece, f"has cached_gaussian {cached!r}, expected a number")
    state = ("MT19937", keys.numpy().astype(np.uint32), pos, int(has_gauss), float(cached))
    try:
        np.random.RandomState().set_state(state)
    except (TypeError, ValueError, IndexError) as exc:
        raise _rng_error(piece, f"is not valid ({exc})") from None
    return state


def _checked_python_state(value: Any) -> Tuple[int, Tuple[int, ...], Optional[float]]:
    """Python's ``random`` state as ``random.setstate`` takes it (which would silently
    truncate words wider than 32 bits, hence the explicit range checks)."""
    piece = "python random"
    if not isinstance(value, dict) or not isinstance(value.get("state"), list):
        raise _rng_error(piece, "is not a dict with a 'state' list")
    internal, gauss_next = value["state"], value.get("gauss_next")
    if len(internal) != _MT_WORDS + 1:
        raise _rng_error(piece, f"has {len(internal)} words, expected {_MT_WORDS + 1}")
    if not all(_is_int(word) and 0 <= word < _WORD_LIMIT for word in internal[:-1]):
        raise _rng_error(piece, "has words that are not 32-bit unsigned integers")
    if not _is_int(internal[-1]) or not 0 <= internal[-1] <= _MT_WORDS:
        raise _rng_error(piece, f"has position {internal[-1]!r}, expected an int in "
                                f"0..{_MT_WORDS}")
    if gauss_next is not None and not isinstance(gauss_next, float):
        raise _rng_error(piece, f"has gauss_next {gauss_next!r}, expected None or a float")
    state = (value.get("version"), tuple(internal), gauss_next)
    try:
        random.Random().setstate(state)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _rng_error(piece, f"is not valid ({exc})") from None
    return state


class _CheckedRngState(NamedTuple):
    """A snapshot whose every piece was accepted by a scratch generator: applying it cannot
    fail half-way."""

    torch_state: torch.Tensor
    cuda_states: List[torch.Tensor]
    numpy_state: Optional[Tuple[str, Any, int, int, float]]
    python_state: Optional[Tuple[int, Tuple[int, ...], Optional[float]]]


def _check_rng_state(state: Any) -> _CheckedRngState:
    """Validate a :func:`get_rng_state` snapshot piece by piece, raising
    :class:`CheckpointError` naming the first bad piece; no real generator is touched."""
    if not isinstance(state, Mapping):
        raise CheckpointError("the 'rng' entry is malformed: it is not a dict")
    torch_state = _checked_generator_tensor(state.get("torch"), "torch CPU", "cpu")
    cuda = state.get("cuda", [])
    if not isinstance(cuda, list):
        raise _rng_error("CUDA", "is not a list of tensors")
    restorable = min(len(cuda), torch.cuda.device_count()) if torch.cuda.is_available() else 0
    for index, cuda_state in enumerate(cuda):
        if index < restorable:
            _checked_generator_tensor(cuda_state, f"CUDA {index}", f"cuda:{index}")
        elif not isinstance(cuda_state, torch.Tensor) or cuda_state.dtype != torch.uint8:
            raise _rng_error(f"CUDA {index}", "is not a uint8 tensor")
    numpy_state = state.get("numpy")
    python_state = state.get("python")
    return _CheckedRngState(
        torch_state=torch_state,
        cuda_states=list(cuda),
        numpy_state=None if numpy_state is None else _checked_numpy_state(numpy_state),
        python_state=None if python_state is None else _checked_python_state(python_state),
    )


def _apply_rng_state(state: _CheckedRngState) -> None:
    torch.set_rng_state(state.torch_state)
    if state.cuda_states:
        saved = len(state.cuda_states)
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            if count != saved:
                warnings.warn(
                    f"checkpoint holds {saved} CUDA generator states but this machine "
                    f"has {count} GPUs; restoring the first {min(count, saved)}",
                    stacklevel=3,
                )
            for index, cuda_state in enumerate(state.cuda_states[:count]):
                torch.cuda.set_rng_state(cuda_state, index)
        else:
            warnings.warn("checkpoint holds CUDA generator states but CUDA is not available "
                          "here; they are not restored", stacklevel=3)
    if state.numpy_state is not None:
        np.random.set_state(state.numpy_state)
    if state.python_state is not None:
        random.setstate(state.python_state)


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a snapshot taken by :func:`get_rng_state` (the generators absent from this
    machine, e.g. CUDA on a CPU-only host, are skipped with a warning).

    Every piece is checked first, so a malformed snapshot raises :class:`CheckpointError`
    and leaves all generators as they were.
    """
    _apply_rng_state(_check_rng_state(state))


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


def _verify_record_checksums(handle: BinaryIO, path: Path) -> None:
    """Check the CRC-32 of every record of a ``torch.save`` zip archive.

    ``torch.save`` stores each tensor's bytes (and the pickled structure) as a zip record
    with its CRC-32, but ``torch.load`` does not check them, so a flipped bit in tensor data
    would load silently. Records whose CRC was not computed (written while
    ``torch.serialization.set_crc32_options(False)`` was in effect: the field is 0) are
    skipped. A file that is not a zip archive is left to ``torch.load`` to diagnose.
    """
    if not zipfile.is_zipfile(handle):
        handle.seek(0)
        return
    handle.seek(0)
    try:
        with zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size > 0:
                    continue
                what = "tensor data" if "/data/" in info.filename else "structure"
                try:
                    with archive.open(info) as record:
                        while record.read(1 << 20):
                            pass
                except zipfile.BadZipFile as exc:
                    raise CheckpointError(
                        f"{path} is not a readable plinio checkpoint: record "
                        f"'{info.filename}' ({what}) fails its check ({exc}): the file is "
                        f"corrupted; resume from an earlier copy"
                    ) from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable plinio checkpoint: "
                              f"{_describe_load_failure(exc)}") from None
    handle.seek(0)


def _read(path: Path) -> Dict[str, Any]:
    """Check the record checksums, load with the restricted unpickler, and turn every
    failure into one clear error."""
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {path}")
    with open(path, "rb") as handle:  # one open file: checked and loaded bytes are the same
        _verify_record_checksums(handle, path)
        try:
            payload = torch.load(handle, map_location="cpu", weights_only=True)
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


# Per-parameter state entries that torch.optim's optimizers keep with the parameter's own
# shape (Adam/AdamW/NAdam/RAdam/Adamax, SGD/RMSprop momentum, Adadelta, Adagrad, ASGD, Rprop).
# Adafactor's factored rows/columns and LBFGS's flat history are not listed: their shapes differ.
_PARAMETER_SHAPED_STATE = frozenset({
    "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf", "momentum_buffer", "square_avg",
    "acc_delta", "grad_avg", "sum", "ax", "prev", "step_size",
})


def _has_torch_optim_layout(optimizer: Any) -> bool:
    """Whether ``optimizer`` is (or derives from) one of torch.optim's own optimizers, whose
    state names are known; other optimizers get the structural checks only."""
    return any(cls.__module__.startswith("torch.optim.") and cls is not torch.optim.Optimizer
               for cls in type(optimizer).__mro__)


def _validate_optimizer_state(saved: Any, optimizer: Any, where: str,
                              names: Mapping[int, str]) -> None:
    """Check a saved optimizer state against ``optimizer``'s parameters.

    ``Optimizer.load_state_dict`` only compares group sizes, and a per-parameter buffer of
    the wrong shape either fails at the next step or broadcasts silently; checking here
    (group count and sizes, every state entry refers to a parameter, the buffers of
    torch.optim's optimizers have their parameter's shape, ``step`` is a scalar) keeps a
    failed load side-effect free. ``names`` maps ``id(parameter)`` to its qualified name.
    """
    rebuild = "build the optimizer over the same parameters, in the same order, as when it was saved"
    if (not isinstance(saved, dict) or not isinstance(saved.get("param_groups"), list)
            or not isinstance(saved.get("state"), dict)):
        raise CheckpointError(f"{where} state is malformed (no 'param_groups' list and "
                              f"'state' dict)")
    groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    if len(groups) != len(saved_groups):
        raise CheckpointError(f"{where} has {len(groups)} parameter groups but the "
                              f"checkpoint has {len(saved_groups)}; {rebuild}")
    saved_ids: List[Any] = []
    for g, (group, saved_group) in enumerate(zip(groups, saved_groups)):
        ids = saved_group.get("params") if isinstance(saved_group, dict) else None
        if not isinstance(ids, list):
            raise CheckpointError(f"{where} group {g} is malformed (no 'params' list)")
        if len(group["params"]) != len(ids):
            raise CheckpointError(f"{where} group {g} has {len(group['params'])} parameters "
                                  f"but the checkpoint has {len(ids)}; {rebuild}")
        saved_ids.extend(ids)
    if len(set(saved_ids)) != len(saved_ids):
        raise CheckpointError(f"{where} state is malformed: a parameter id appears twice "
                              f"in its groups")
    params = [param for group in groups for param in group["params"]]
    by_id = {saved_id: (position, param)
             for position, (saved_id, param) in enumerate(zip(saved_ids, params))}
    check_shapes = _has_torch_optim_layout(optimizer)
    for param_id, entry in saved["state"].items():
        if param_id not in by_id:
            raise CheckpointError(f"{where} has state for parameter id {param_id!r}, which "
                                  f"is in none of its parameter groups; {rebuild}")
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where} state of parameter id {param_id!r} is not a dict")
        position, param = by_id[param_id]
        label = names.get(id(param), f"#{position} of the optimizer")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            if key == "step" and value.numel() != 1:
                raise CheckpointError(f"{where}: 'step' of parameter {label} has shape "
                                      f"{tuple(value.shape)}; it must be a scalar")
            if (check_shapes and key in _PARAMETER_SHAPED_STATE
                    and value.shape != param.shape):
                raise CheckpointError(
                    f"{where}: '{key}' of parameter {label} has shape {tuple(value.shape)} "
                    f"in the checkpoint but the parameter has shape {tuple(param.shape)}; "
                    f"{rebuild}"
                )


def _validate_same_layout(saved: Any, current: Any, where: str) -> None:
    """Check that ``saved`` has the layout of ``current`` (an LR scheduler's state_dict,
    which ``load_state_dict`` copies into the scheduler unchecked): no entry ``current``
    lacks, lists of the same length (one item per parameter group), tensors of the same
    shape. ``current`` may have entries ``saved`` lacks (added by a newer torch)."""
    if isinstance(current, dict):
        if not isinstance(saved, dict):
            raise CheckpointError(f"{where} is a {type(saved).__name__}, expected a dict")
        for key, value in saved.items():
            if key not in current:
                raise CheckpointError(
                    f"{where} has entry {key!r} that this scheduler's state does not have: it "
                    f"was saved from a different scheduler class; build the same schedulers, "
                    f"in the same order, as when it was saved"
                )
            _validate_same_layout(value, current[key], f"{where}[{key!r}]")
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(current):
            found = len(saved) if isinstance(saved, (list, tuple)) else type(saved).__name__
            raise CheckpointError(
                f"{where} has {found} items in the checkpoint but {len(current)} here (a "
                f"different number of parameter groups or sub-schedulers?)"
            )
        for index, (saved_item, item) in enumerate(zip(saved, current)):
            _validate_same_layout(saved_item, item, f"{where}[{index}]")
    elif isinstance(current, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != current.shape:
            raise CheckpointError(f"{where} has shape {_shape_of(saved)} in the checkpoint "
                                  f"but {tuple(current.shape)} here")


def load_checkpoint(
    path: PathLike,
    model: nn.Module,
    optimizers: StatefulArg = None,
    schedulers: StatefulArg = None,
    restore_rng: bool = True,
) -> Dict[str, Any]:
    """Resume from a file written by :func:`save_checkpoint`; returns its ``extra`` dict.

    The file's record checksums are verified, it is read with ``weights_only=True``, and
    every piece is checked before anything changes: the model's keys and shapes, the
    optimizers' groups and per-parameter buffers, the schedulers' layout, and the random
    generator states (each applied to a scratch generator first). On any error
    :class:`CheckpointError` names the piece and the objects are left exactly as they were.
    Tensors are loaded on CPU and copied into the model's own tensors, so the model keeps
    its device.
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
    names = {id(param): name for name, param in target.named_parameters()}
    for index, (opt, saved) in enumerate(zip(opt_list, payload["optimizers"])):
        _validate_optimizer_state(saved, opt, f"{source}: optimizers[{index}] "
                                              f"({type(opt).__name__})", names)
    for index, (sched, saved) in enumerate(zip(sched_list, payload["schedulers"])):
        _validate_same_layout(saved, sched.state_dict(),
                              f"{source}: schedulers[{index}] ({type(sched).__name__})")
    rng: Optional[_CheckedRngState] = None
    if restore_rng:
        if payload.get("rng") is None:
            raise CheckpointError(f"{source} was saved with save_rng=False; pass "
                                  f"restore_rng=False to resume without RNG state")
        try:
            rng = _check_rng_state(payload["rng"])
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}; nothing was loaded (restore_rng=False "
                                  f"resumes without the saved generator states)") from None

    target.load_state_dict(payload["model"], strict=True)
    for opt, saved in zip(opt_list, payload["optimizers"]):
        opt.load_state_dict(saved)
    for sched, saved in zip(sched_list, payload["schedulers"]):
        sched.load_state_dict(saved)
    if rng is not None:
        _apply_rng_state(rng)
    return payload["extra"]
