"""The README's seed example runs as written (the code block is taken from README.md)."""
import re
from pathlib import Path

import torch
import torch.nn as nn

README = Path(__file__).resolve().parents[1] / "README.md"


def seed_example_block(text: str) -> str:
    """The python code block of README.md that defines the seed example supernet."""
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    matches = [b for b in blocks if "class SimpleSuperNet" in b and "arch_export(" in b]
    assert len(matches) == 1, (
        f"README.md must contain exactly one ```python block with the seed example "
        f"(class SimpleSuperNet ... arch_export()); found {len(matches)}")
    return matches[0]


def test_seed_example_runs_verbatim_and_gives_spec_costs():
    namespace: dict = {"__name__": "readme_seed_example"}
    exec(compile(seed_example_block(README.read_text(encoding="utf-8")), "README.md", "exec"),
         namespace)
    net = namespace["pitsn_net"]
    exported = namespace["exported_model"]
    # docs/behaviour.md §4.3: the unsearched seed example, before any training step
    assert float(net.get_size().detach()) == 13344
    assert float(net.get_macs().detach()) == 54657024
    assert isinstance(exported, nn.Module)
    x = torch.randn(2, 32, 64, 64)
    with torch.no_grad():
        assert exported.eval()(x).shape == (2, 32, 64, 64)
