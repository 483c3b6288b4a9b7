"""The README's "Costs and budgets" examples run as written and print the documented values."""
import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def costs_section_blocks() -> list:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Costs and budgets")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.DOTALL)


@pytest.fixture
def one_thread():
    """The examples' tiny convolutions: one intra-op thread (no oversubscribed cores in CI)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cost_examples_run_and_print_their_documented_values(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)   # the latency example writes its table here
    blocks = costs_section_blocks()
    assert len(blocks) == 5, "one example per built-in (params/macs, peak_memory, latency_table), own, targets"
    namespace: dict = {"__name__": "readme_costs"}
    for block in blocks:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, "README.md", "exec"), namespace)
        # each print writes one line; a trailing "# value" comment documents it (unless it names a unit)
        comments = re.findall(r"^print\(.*\)(?:\s+# (.*))?$", block, flags=re.MULTILINE)
        lines = printed.getvalue().splitlines()
        assert len(lines) == len(comments)
        for line, documented in zip(lines, comments):
            if documented and "seconds" not in documented:
                assert line == documented
    pit = namespace["pit"]
    assert set(pit.targets_met()) == {"peak_memory"}
    assert (tmp_path / "latency_net.csv").exists()
