"""examples/ddp_search.py end to end in one process (a world of one rank): search,
checkpoint, resume, export. The two-rank behaviour itself is tested in test_ddp.py."""
import importlib.util
import socket
from pathlib import Path
from types import ModuleType

import pytest
import torch.distributed as dist

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_search.py"

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ddp_search_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_example_searches_checkpoints_and_resumes(tmp_path: Path, monkeypatch, capsys) -> None:
    example = _load_example()
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    checkpoint = tmp_path / "search.ckpt"
    common = ["--batch-size", "8", "--warmup-steps", "2", "--checkpoint", str(checkpoint),
              "--checkpoint-every", "2", "--backend", "gloo"]
    example.main(["--steps", "4"] + common)
    first = capsys.readouterr().out
    assert checkpoint.is_file()
    assert "all ranks exported the same architecture: True" in first
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    example.main(["--steps", "6", "--resume"] + common)
    second = capsys.readouterr().out
    assert "resumed at step 4" in second
    assert "all ranks exported the same architecture: True" in second
    assert not dist.is_initialized()
