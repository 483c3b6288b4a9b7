"""The layering rule of docs/design.md §1, read from the source (no module is imported).

Imports run downwards only: support modules <- ops <- graph / fast / cost <- methods <- demo,
and no circle of files imports itself. Every import counts, at any depth (function-local
ones too), except those under ``if TYPE_CHECKING:``.
"""
import ast
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "plinio"

# layer of each part of the package (longest matching prefix wins); a module may import
# modules of its own layer or of a lower one
LAYERS: Dict[str, int] = {
    "plinio": 0, "plinio.checkpoint": 0, "plinio.safety": 0,
    "plinio.ops": 1, "plinio._C": 1, "plinio._extension": 1,
    "plinio.graph": 2, "plinio.fast": 2, "plinio.cost": 2,
    "plinio.methods": 3,
    "plinio.demo": 4,
}


class Import(NamedTuple):
    source: str  # importing module
    target: str  # imported module (a submodule when ``from package import submodule``)
    line: int


def module_files(root: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package at ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_module_call(node: ast.AST) -> Optional[str]:
    """The constant name given to ``importlib.import_module("...")``, if that is what ``node`` is."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return node.args[0].value if name == "import_module" and isinstance(node.args[0].value, str) else None


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> List[Import]:
    """Imports of plinio modules made by module ``name`` (TYPE_CHECKING blocks skipped)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: List[Import] = []

    def add(target: str, line: int) -> None:
        if target == "plinio" or target.startswith("plinio."):
            found.append(Import(name, target, line))

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = node.module if node.level == 0 else ".".join(p for p in (base, node.module) if p)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                add(sub if sub in modules else target, node.lineno)
        elif _import_module_call(node) is not None:
            add(_import_module_call(node), node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def layer_of(module: str) -> Optional[int]:
    """Layer of the longest ``LAYERS`` entry that is ``module`` or a package holding it (the
    root package's entry covers ``plinio/__init__.py`` only)."""
    if module == "plinio":
        return LAYERS["plinio"]
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return None


def upward_imports(modules: Dict[str, Path]) -> List[str]:
    """One line per import of a module from a higher layer."""
    problems = []
    for name, path in modules.items():
        for imp in imports_of(name, path, modules):
            source, target = layer_of(imp.source), layer_of(imp.target)
            if source is not None and target is not None and target > source:
                problems.append(f"{imp.source} (line {imp.line}) imports {imp.target}: layer {target} "
                                f"is above layer {source}")
    return problems


def import_cycle(modules: Dict[str, Path]) -> Optional[List[str]]:
    """A circle of module files importing each other (first found), else None."""
    graph = {name: sorted({i.target for i in imports_of(name, path, modules) if i.target in modules} - {name})
             for name, path in modules.items()}
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    stack: List[str] = []

    def visit(name: str) -> Optional[List[str]]:
        state[name] = 1
        stack.append(name)
        for target in graph[name]:
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in graph:
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


# ---------------------------------------------------------------- the rule on plinio itself
def test_every_module_has_a_layer():
    missing = [name for name in module_files(PACKAGE_ROOT) if layer_of(name) is None]
    assert not missing, f"modules outside the layer table of {__file__}: {missing}; add them to LAYERS"


def test_no_module_imports_from_a_higher_layer():
    problems = upward_imports(module_files(PACKAGE_ROOT))
    assert not problems, "imports must run downwards (docs/design.md §1):\n" + "\n".join(problems)


def test_no_import_cycle_between_files():
    cycle = import_cycle(module_files(PACKAGE_ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# ---------------------------------------------------------------- the checker itself
def _package(tmp_path: Path, files: Dict[str, str]) -> Dict[str, Path]:
    root = tmp_path / "plinio"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(root)


@pytest.mark.parametrize("source, caught", [
    ("def f():\n    from plinio.methods.pit import PIT\n", True),
    ("from ..methods import PIT\n", True),
    ("import importlib\nM = importlib.import_module('plinio.demo.cli')\n", True),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from plinio.methods import PIT\n", False),
    ("from plinio.ops import combine\n", False),
])
def test_checker_finds_upward_imports_at_any_depth(tmp_path, source, caught):
    modules = _package(tmp_path, {"__init__.py": "", "graph/__init__.py": "", "graph/tracing.py": source,
                                  "methods/__init__.py": "", "demo/__init__.py": "", "demo/cli.py": "",
                                  "ops/__init__.py": "def combine(): pass\n"})
    assert bool(upward_imports(modules)) == caught


def test_checker_finds_cycles_but_not_type_checking_ones(tmp_path):
    files = {"__init__.py": "", "graph/__init__.py": "", "graph/a.py": "from plinio.graph import b\n",
             "graph/b.py": "def f():\n    from .a import g\n"}
    assert import_cycle(_package(tmp_path / "real", files)) == ["plinio.graph.a", "plinio.graph.b",
                                                                 "plinio.graph.a"]
    files["graph/b.py"] = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\n"
    assert import_cycle(_package(tmp_path / "typing", files)) is None
