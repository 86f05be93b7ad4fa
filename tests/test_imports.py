"""House rules checked on the source: imports inside featx/ run one way (no cycles, imports inside
functions counted too), and no function is over 60 lines or takes more than 8 parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "featx"
MAX_LINES, MAX_PARAMS = 60, 8


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imported(tree: ast.AST, name: str, is_pkg: bool, known: set[str], top: str) -> set[str]:
    """featx modules a module imports anywhere in its source (the most specific module each names)."""
    out: set[str] = set()
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import featx.x.y` names x.y; a name inside a module names it
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] == top and t != name:
                out.add(t)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    return {m: imported(ast.parse(p.read_text()), m, p.name == "__init__.py", known, root.name)
            for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        path.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def too_big(root: Path = ROOT) -> list[str]:
    """Functions over MAX_LINES lines or with more than MAX_PARAMS parameters (self/cls not counted)."""
    bad = []
    for p in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
            if names[:1] in (["self"], ["cls"]):
                names = names[1:]
            lines = node.end_lineno - node.lineno + 1
            where = f"{p.relative_to(root.parent)}:{node.lineno} {node.name}"
            if lines > MAX_LINES:
                bad.append(f"{where}: {lines} lines")
            if len(names) > MAX_PARAMS:
                bad.append(f"{where}: {len(names)} parameters")
    return bad


def test_no_import_cycle_in_featx():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_functions_are_small():
    assert too_big() == []


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


@pytest.mark.parametrize("files, cycle", [
    ({"__init__.py": "", "a.py": "def f():\n    from .b import x\n", "b.py": "from featx.a import f\n"},
     ["featx.a", "featx.b", "featx.a"]),
    ({"__init__.py": "", "p/__init__.py": "from .q import y\n", "p/q.py": "from ..r import z\n",
      "r.py": "import featx.p.q as q\n"}, ["featx.p.q", "featx.r", "featx.p.q"]),
    ({"__init__.py": "", "a.py": "from . import b\n", "b.py": "import os\n"}, None),
])
def test_cycle_finder_sees_function_and_relative_imports(tmp_path, files, cycle):
    root = write(tmp_path / "featx", files)
    assert find_cycle(graph(root)) == cycle


def test_size_check_counts_lines_and_parameters(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    root = write(tmp_path / "featx", {"m.py": f"def long():\n{body}\n"
                                      "def wide(self, a, b, c, d, e, f, g, h, i):\n    pass\n"
                                      "def ok(self, a, b, c, d, e, f, g, h):\n    pass\n"})
    assert too_big(root) == ["featx/m.py:1 long: 61 lines", "featx/m.py:63 wide: 9 parameters"]
