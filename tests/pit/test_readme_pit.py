"""The README's PIT example runs as written and does what its comments say."""
import re
from pathlib import Path

import torch
import torch.nn as nn

README = Path(__file__).resolve().parents[2] / "README.md"


def _pit_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- section: pit -->", 1)[1].split("<!-- section:", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the README's PIT section must hold exactly one python example"
    return blocks[0]


def test_readme_pit_example_runs(capsys):
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme_pit_example"}
    exec(compile(_pit_block(), "README.md", "exec"), namespace)
    pit_model, exported = namespace["pit_model"], namespace["exported"]
    assert "'0': {'in_features': 3" in capsys.readouterr().out
    assert pit_model.get_macs().item() < 3 * 16 * 5 * 32 + 16 * 16 * 9 * 32 + 16 * 32 * 4
    assert not any(type(m).__module__.startswith("plinio") for m in exported.modules())
    assert isinstance(exported.get_submodule("0_exported_bn"), nn.BatchNorm1d)
    assert exported.eval()(torch.randn(2, 3, 32)).shape == (2, 4)
