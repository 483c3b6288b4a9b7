"""plinio.checkpoint on plain models: exact resume, validation before mutation, safe loading
and atomic saving."""
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import plinio.checkpoint as ckpt
from checkpoint_setup import Net, seed_all, setup, step
from plinio.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    seed_all(1)
    net, opt_a, opt_b, sched = setup()
    losses = [step(net, [opt_a, opt_b], sched) for _ in range(3)]
    path = tmp_path / "search.ckpt"
    save_checkpoint(path, net, optimizers=[opt_a, opt_b], schedulers=sched,
                    extra={"step": 3, "history": losses})
    reference = [step(net, [opt_a, opt_b], sched) for _ in range(3)]
    final = {k: v.clone() for k, v in net.state_dict().items()}

    seed_all(99)  # a fresh process would start from other generator states
    net2, opt_a2, opt_b2, sched2 = setup(seed=5)
    extra = load_checkpoint(path, net2, optimizers=[opt_a2, opt_b2], schedulers=[sched2])
    assert extra == {"step": 3, "history": losses}
    resumed = [step(net2, [opt_a2, opt_b2], sched2) for _ in range(3)]
    assert resumed == reference
    for key, value in net2.state_dict().items():
        assert torch.equal(value, final[key]), key
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_rng_state_roundtrip_restores_every_generator() -> None:
    seed_all(3)
    state = ckpt.get_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    seed_all(4)
    ckpt.set_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile])
def test_checkpoint_of_a_wrapped_model_loads_into_the_plain_model(tmp_path: Path, wrap) -> None:
    """DataParallel / DDP / torch.compile only prefix the keys (nothing is compiled here:
    compilation is lazy); checkpoints are written and read without the prefix."""
    torch.manual_seed(0)
    net = Net()
    wrapped = wrap(net)
    assert any(k.startswith(("module.", "_orig_mod.")) for k in wrapped.state_dict())
    path = tmp_path / "w.ckpt"
    save_checkpoint(path, wrapped)
    torch.manual_seed(1)
    plain = Net()
    load_checkpoint(path, plain)
    for key, value in net.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value)
    torch.manual_seed(2)
    rewrapped = wrap(Net())
    load_checkpoint(path, rewrapped)
    for key, value in net.state_dict().items():
        assert torch.equal(_unwrapped(rewrapped).state_dict()[key], value)


def _unwrapped(module: nn.Module) -> nn.Module:
    return getattr(module, "module", None) or getattr(module, "_orig_mod")


def test_extra_must_be_plain_data(tmp_path: Path) -> None:
    net = Net()
    path = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match=r"extra\['fn'\].*function"):
        save_checkpoint(path, net, extra={"fn": seed_all})
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_optimizers_must_be_stateful(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"optimizers\[1\].*state_dict"):
        save_checkpoint(tmp_path / "x.ckpt", Net(), optimizers=[
            torch.optim.SGD(Net().parameters(), lr=0.1), "adam"])


@pytest.mark.parametrize("change, pattern", [
    ("width", r"key 'conv\.weight' has shape \(16, 2, 3\) in checkpoint .* but \(8, 2, 3\)"),
    ("extra_key", r"checkpoint .* has key 'extra\.weight' that the model does not have"),
    ("missing_key", r"key 'conv\.weight' of the model is missing"),
])
def test_different_architecture_is_refused_before_loading(
        tmp_path: Path, unchanged, change: str, pattern: str) -> None:
    source = Net(hidden=16)
    if change == "width":
        state = source.state_dict()
    else:
        state = Net().state_dict()
        if change == "extra_key":
            state["extra.weight"] = torch.zeros(2)
        else:
            del state["conv.weight"]
    path = tmp_path / "other.ckpt"
    torch.save({"format": ckpt.FORMAT_TAG, "version": 1, "model": state, "optimizers": [],
                "schedulers": [], "rng": ckpt.get_rng_state(), "extra": {}}, path)
    net = Net()
    check = unchanged(net)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path, net)
    check()


def test_optimizer_mismatch_is_refused_before_the_model_changes(tmp_path: Path,
                                                                unchanged) -> None:
    net, opt_a, opt_b, sched = setup()
    path = tmp_path / "a.ckpt"
    save_checkpoint(path, net, optimizers=[opt_a, opt_b], schedulers=sched)
    torch.manual_seed(7)
    other = Net()
    check = unchanged(other)
    one_group = torch.optim.SGD(other.parameters(), lr=0.1)
    before = one_group.state_dict()
    with pytest.raises(CheckpointError, match=r"optimizers\[0\] \(SGD\) group 0 has 4 parameters but "
                                              r"the checkpoint has 2"):
        load_checkpoint(path, other, optimizers=[one_group, one_group],
                        schedulers=[sched])
    with pytest.raises(CheckpointError, match=r"holds 2 optimizers but 1 were given"):
        load_checkpoint(path, other, optimizers=one_group, schedulers=[sched])
    check()
    assert one_group.state_dict() == before


def _assert_refused(path: Path, unchanged, pattern: str) -> None:
    net = Net()
    check = unchanged(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rng_before = torch.get_rng_state()
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path, net, optimizers=opt)
    check()
    assert opt.state_dict()["state"] == {}
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_truncated_file_is_refused(tmp_path: Path, unchanged) -> None:
    path = tmp_path / "t.ckpt"
    net = Net()
    save_checkpoint(path, net, optimizers=torch.optim.SGD(net.parameters(), lr=0.1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_refused(path, unchanged, r"not a readable plinio checkpoint: the file is truncated")


def test_random_bytes_are_refused(tmp_path: Path, unchanged) -> None:
    path = tmp_path / "r.ckpt"
    path.write_bytes(os.urandom(4096))
    _assert_refused(path, unchanged, r"not a readable plinio checkpoint")


def test_empty_file_is_refused(tmp_path: Path, unchanged) -> None:
    path = tmp_path / "e.ckpt"
    path.write_bytes(b"")
    _assert_refused(path, unchanged, r"not a readable plinio checkpoint")


class _Payload:
    """Unpickling this object would create a marker file: the loader must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["raw_pickle_protocol2", "raw_pickle_protocol4",
                                       "torch_zip"])
def test_code_carrying_pickle_is_refused_and_not_executed(tmp_path: Path, unchanged,
                                                          container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"format": ckpt.FORMAT_TAG, "version": 1, "model": _Payload(marker)}
    if container.startswith("raw_pickle"):
        path.write_bytes(pickle.dumps(payload, protocol=int(container[-1])))
    else:
        torch.save(payload, path)
        assert zipfile.is_zipfile(path)
    _assert_refused(path, unchanged, r"not made of tensors and plain data only.*"
                                     r"objects that could carry code, which are refused")
    assert not marker.exists()


def test_a_bare_state_dict_is_not_a_plinio_checkpoint(tmp_path: Path, unchanged) -> None:
    path = tmp_path / "sd.pt"
    torch.save(Net().state_dict(), path)
    _assert_refused(path, unchanged, r"no 'plinio\.checkpoint' format tag")


def test_a_newer_format_version_is_refused(tmp_path: Path, unchanged) -> None:
    path = tmp_path / "v.ckpt"
    save_checkpoint(path, Net())
    payload = torch.load(path, weights_only=True)
    payload["version"] = ckpt.FORMAT_VERSION + 1
    torch.save(payload, path)
    _assert_refused(path, unchanged, r"format version 2.*upgrade plinio")


def test_missing_file_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.ckpt", Net())


def test_interrupted_save_keeps_previous_checkpoint(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = Net()
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, net, extra={"step": 1})
    saved_state = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.fc.weight.add_(1.0)

    real_save = torch.save

    def crash_mid_write(obj, handle, *args, **kwargs) -> None:
        handle.write(b"PK\x03\x04partial")  # some bytes reach the disk, then the process dies
        raise OSError("simulated disk failure during save")

    monkeypatch.setattr(ckpt.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="simulated disk failure"):
        save_checkpoint(path, net, extra={"step": 2})
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temp file left behind
    fresh = Net()
    assert load_checkpoint(path, fresh) == {"step": 1}
    for key, value in saved_state.items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_save_overwrites_atomically_and_rejects_bad_targets(tmp_path: Path) -> None:
    net = Net()
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, net, extra={"n": 1})
    save_checkpoint(path, net, extra={"n": 2})
    assert load_checkpoint(path, Net()) == {"n": 2}
    with pytest.raises(IsADirectoryError, match="give a file name"):
        save_checkpoint(tmp_path, net)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "missing" / "c.ckpt", net)


def test_checkpoint_saved_without_rng_needs_explicit_opt_out(tmp_path: Path) -> None:
    path = tmp_path / "n.ckpt"
    save_checkpoint(path, Net(), save_rng=False)
    with pytest.raises(CheckpointError, match="restore_rng=False"):
        load_checkpoint(path, Net())
    assert load_checkpoint(path, Net(), restore_rng=False) == {}


def test_validate_state_dict_is_a_side_effect_free_runtime_error(unchanged) -> None:
    net = Net()
    check = unchanged(net)
    other = Net(hidden=4).state_dict()
    with pytest.raises(RuntimeError, match=r"key 'conv\.weight' has shape \(4, 2, 3\) in the "
                                           r"state_dict but \(8, 2, 3\)") as info:
        ckpt.validate_state_dict(net, other)
    assert isinstance(info.value, CheckpointError)
    check()
    ckpt.validate_state_dict(net, Net().state_dict())  # same architecture: accepted
