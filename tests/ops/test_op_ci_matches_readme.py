"""CI runs the README's test command: .ci/run extracts it from README.md with one pattern,
so both stay identical; these tests keep that extraction meaningful."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATTERN = r"^python3 -m venv \.venv .*-m pytest$"  # the grep -E pattern of .ci/run


def test_ci_extracts_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f"grep -E '{PATTERN}' README.md" in ci
    # CI runs no pytest command of its own besides the README's
    assert not re.search(r"(bin/pytest|python3? -m pytest)", ci)


def test_readme_has_exactly_one_test_command_and_a_demo_command():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    tests = [ln for ln in lines if re.match(PATTERN, ln)]
    assert len(tests) == 1, tests
    cmd = tests[0]
    assert "pip install torch==2.13.0" in cmd and '-e ".[test,demo]"' in cmd
    assert "--no-build-isolation" in cmd
    demo = [ln for ln in lines if ln.startswith("python3 -m venv .venv ")
            and ln.endswith("-m plinio.demo")]
    assert len(demo) == 1
    # same setup as the test command, then the demo
    assert demo[0].rsplit(" && ", 1)[0] == cmd.rsplit(" && ", 1)[0]
