"""A checkpoint with one malformed piece (a random-generator state, an optimizer or scheduler
state, corrupted tensor bytes) is refused with CheckpointError naming the piece, and the
model, the optimizers, the scheduler and every random generator stay bit-identical."""
import copy
import random
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch

import plinio.checkpoint as ckpt
from checkpoint_setup import Net, seed_all, setup, step
from plinio.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

Payload = Dict[str, Any]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A checkpoint of three training steps (every optimizer holds per-parameter state)."""
    seed_all(1)
    net, opt_a, opt_b, sched = setup()
    for _ in range(3):
        step(net, [opt_a, opt_b], sched)
    path = tmp_path / "good.ckpt"
    save_checkpoint(path, net, optimizers=[opt_a, opt_b], schedulers=sched)
    return path


def _everything(net, opt_a, opt_b, sched) -> Payload:
    """Deep copy of all the state a load could change."""
    return copy.deepcopy({
        "model": net.state_dict(), "opt_a": opt_a.state_dict(), "opt_b": opt_b.state_dict(),
        "sched": sched.state_dict(), "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(), "python": random.getstate(),
    })


def _assert_identical(before: Any, after: Any, where: str = "state") -> None:
    assert type(before) is type(after), where
    if isinstance(before, torch.Tensor):
        assert before.dtype == after.dtype and torch.equal(before, after), where
    elif isinstance(before, np.ndarray):
        assert before.dtype == after.dtype and np.array_equal(before, after), where
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), where
        for key in before:
            _assert_identical(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        assert len(before) == len(after), where
        for index, (a, b) in enumerate(zip(before, after)):
            _assert_identical(a, b, f"{where}[{index}]")
    else:
        assert before == after, where


def _assert_refused_untouched(path: Path, unchanged, pattern: str) -> None:
    """Loading ``path`` into a trained setup raises and changes nothing at all."""
    seed_all(7)
    net, opt_a, opt_b, sched = setup(seed=5)
    step(net, [opt_a, opt_b], sched)
    check = unchanged(net)
    before = _everything(net, opt_a, opt_b, sched)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path, net, optimizers=[opt_a, opt_b], schedulers=sched)
    check()
    _assert_identical(before, _everything(net, opt_a, opt_b, sched))


def _tampered(source: Path, change: Callable[[Payload], None]) -> Path:
    payload = torch.load(source, weights_only=True)
    change(payload)
    path = source.with_name("tampered.ckpt")
    torch.save(payload, path)
    return path


def _set(key_path: str, value: Callable[[Any], Any]) -> Callable[[Payload], None]:
    """``payload[k1][k2]...[kn] = value(old)`` for ``key_path`` 'k1/k2/.../kn' (int keys
    for lists)."""
    keys = [int(k) if k.isdigit() else k for k in key_path.split("/")]

    def change(payload: Payload) -> None:
        holder = payload
        for key in keys[:-1]:
            holder = holder[key]
        holder[keys[-1]] = value(holder[keys[-1]])
    return change


def _drop_last_word(words: list) -> list:
    return words[:-2] + words[-1:]


MALFORMED = {
    "torch RNG state one byte short": (
        _set("rng/torch", lambda s: s[:-1]),
        r"torch CPU generator state is not valid here \(.*size"),
    "torch RNG state not bytes": (
        _set("rng/torch", lambda s: s.to(torch.int32)), r"torch CPU .* not a uint8 tensor"),
    "numpy keys one short": (
        _set("rng/numpy/keys", lambda k: k[:-1]), r"numpy generator state has keys of shape "
                                                  r"\(623,\), expected \(624,\)"),
    "numpy keys wider than 32 bits": (
        _set("rng/numpy/keys", lambda k: k + 2 ** 32), r"numpy .* outside the 32-bit range"),
    "numpy position past the key": (
        _set("rng/numpy/pos", lambda _: 700), r"numpy .* position 700, expected an int in "
                                              r"0\.\.624"),
    "numpy other generator kind": (
        _set("rng/numpy/kind", lambda _: "PCG64"), r"numpy .* kind 'PCG64'"),
    "python state one word short": (
        _set("rng/python/state", _drop_last_word), r"python random generator state has 624 "
                                                   r"words, expected 625"),
    "python word wider than 32 bits": (
        _set("rng/python/state/3", lambda _: 2 ** 40), r"python random .* not 32-bit"),
    "python position out of range": (
        _set("rng/python/state/624", lambda _: 700), r"python random .* position 700"),
    "python unknown version": (
        _set("rng/python/version", lambda _: 99), r"python random .* not valid \(.*version"),
    "adam buffer of another shape": (
        _set("optimizers/0/state/0/exp_avg", lambda t: t.reshape(-1)),
        r"optimizers\[0\] \(Adam\): 'exp_avg' of parameter conv\.weight has shape \(48,\) in "
        r"the checkpoint but the parameter has shape \(8, 2, 3\)"),
    "sgd momentum that would broadcast silently": (
        _set("optimizers/1/state/0/momentum_buffer", lambda t: t.expand(2, *t.shape).clone()),
        r"optimizers\[1\] \(SGD\): 'momentum_buffer' of parameter fc\.weight has shape "
        r"\(2, 3, 48\)"),
    "adam step not a scalar": (
        _set("optimizers/0/state/1/step", lambda t: t.repeat(3)),
        r"'step' of parameter conv\.bias has shape \(3,\); it must be a scalar"),
    "param group one parameter short": (
        _set("optimizers/0/param_groups/0/params", lambda ids: ids[:-1]),
        r"optimizers\[0\] \(Adam\) group 0 has 2 parameters but the checkpoint has 1"),
    "state of an unknown parameter": (
        _set("optimizers/1/state", lambda st: {**st, 17: st[0]}),
        r"optimizers\[1\] \(SGD\) has state for parameter id 17, which is in none"),
    "scheduler of another class": (
        _set("schedulers/0", lambda st: {**st, "T_max": 10}),
        r"schedulers\[0\] \(StepLR\) has entry 'T_max' .* different scheduler class"),
    "scheduler with other group count": (
        _set("schedulers/0/base_lrs", lambda lrs: lrs * 2),
        r"schedulers\[0\] \(StepLR\)\['base_lrs'\] has 2 items in the checkpoint but 1 here"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_piece_is_refused_and_nothing_changes(saved: Path, unchanged,
                                                        case: str) -> None:
    change, pattern = MALFORMED[case]
    _assert_refused_untouched(_tampered(saved, change), unchanged, pattern)


def _flip_byte_of_largest_tensor(path: Path) -> str:
    """Invert one byte inside the stored bytes of the largest tensor record; returns the
    record's name."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename
                    and not i.filename.endswith("serialization_id")),
                   key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return info.filename


def test_corrupted_tensor_bytes_are_refused_and_nothing_changes(saved: Path,
                                                                unchanged) -> None:
    intact = torch.load(saved, weights_only=True)
    record = _flip_byte_of_largest_tensor(saved)
    flipped = torch.load(saved, weights_only=True)  # torch.load itself does not notice
    with pytest.raises(AssertionError):
        _assert_identical(intact, flipped)
    _assert_refused_untouched(saved, unchanged, rf"record '{record}' \(tensor data\) fails its "
                                                rf"check .*CRC.*: the file is corrupted")


def test_checkpoint_written_without_crc_still_loads(tmp_path: Path) -> None:
    """Files whose records carry no CRC (torch's CRC option off) load unverified."""
    seed_all(2)
    net, opt_a, opt_b, sched = setup()
    step(net, [opt_a, opt_b], sched)
    path = tmp_path / "nocrc.ckpt"
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        save_checkpoint(path, net, optimizers=[opt_a, opt_b], schedulers=sched)
    finally:
        torch.serialization.set_crc32_options(previous)
    with zipfile.ZipFile(path) as archive:
        assert all(info.CRC == 0 for info in archive.infolist())
    fresh, fresh_a, fresh_b, fresh_sched = setup(seed=9)
    load_checkpoint(path, fresh, optimizers=[fresh_a, fresh_b], schedulers=fresh_sched)
    _assert_identical(net.state_dict(), fresh.state_dict())


@pytest.mark.parametrize("make", [
    lambda params: torch.optim.Adafactor(params, lr=1e-2),
    lambda params: torch.optim.LBFGS(params, lr=0.1, max_iter=2),
    lambda params: torch.optim.Adam(params, lr=1e-2, amsgrad=True),
    lambda params: torch.optim.RMSprop(params, lr=1e-2, momentum=0.9, centered=True),
], ids=["Adafactor", "LBFGS", "Adam-amsgrad", "RMSprop-centered"])
def test_optimizers_with_other_state_layouts_resume(tmp_path: Path, make) -> None:
    """The shape check knows torch.optim's layouts: factored (Adafactor) and flat (LBFGS)
    histories are not mistaken for malformed per-parameter buffers."""
    torch.manual_seed(0)
    net = Net()
    opt = make(net.parameters())
    x, target = torch.randn(4, 2, 6), torch.randint(0, 3, (4,))

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), target)
        loss.backward()
        return loss

    opt.step(closure)
    path = tmp_path / "opt.ckpt"
    save_checkpoint(path, net, optimizers=opt)
    torch.manual_seed(1)
    fresh = Net()
    fresh_opt = make(fresh.parameters())
    load_checkpoint(path, fresh, optimizers=fresh_opt)
    _assert_identical(opt.state_dict(), fresh_opt.state_dict())


def test_set_rng_state_with_a_bad_piece_changes_no_generator() -> None:
    seed_all(3)
    state = ckpt.get_rng_state()
    state["python"]["state"] = state["python"]["state"][:-1]
    seed_all(4)
    before = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    with pytest.raises(CheckpointError, match="python random generator state has 624 words"):
        ckpt.set_rng_state(state)
    _assert_identical(before, (torch.get_rng_state(), np.random.get_state(),
                               random.getstate()))


def test_restore_rng_false_skips_a_malformed_rng_entry(saved: Path) -> None:
    """The error says restore_rng=False resumes without the generators; it does."""
    path = _tampered(saved, _set("rng/torch", lambda s: s[:-1]))
    net, opt_a, opt_b, sched = setup(seed=5)
    with pytest.raises(CheckpointError, match=r"restore_rng=False"):
        load_checkpoint(path, net, optimizers=[opt_a, opt_b], schedulers=sched)
    torch_before = torch.get_rng_state()
    load_checkpoint(path, net, optimizers=[opt_a, opt_b], schedulers=sched, restore_rng=False)
    assert torch.equal(torch.get_rng_state(), torch_before)
    reference = torch.load(saved, weights_only=True)["model"]
    _assert_identical(reference, net.state_dict())
