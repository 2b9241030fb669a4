"""Imports run one way: common <- trees <- medusa <- bench <- analysis (notebooks: analysis only).

The checker parses every module with `ast` (nothing is imported), so it sees imports hidden in
functions too. Three rules, each proven able to fail on a planted tree below:
- no module imports a higher layer;
- no import circle between modules (module-level imports);
- no project import inside a function or class body, unless its line says why with `# lazy:`
  (kept for optional heavy dependencies).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("common", "trees", "medusa", "bench", "analysis")
RANK = {name: i for i, name in enumerate(LAYERS)}
LAZY_MARK = "# lazy:"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    return {module_name(root, p): p for layer in LAYERS if (root / layer).is_dir()
            for p in sorted((root / layer).rglob("*.py"))}


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool, str]]:
    """(imported project module, line, inside a function/class?, source line) for each import."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, bool, str]] = []

    def target(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
            for name in names:
                t = target(name)
                if t is not None and t != module:
                    found.append((t, child.lineno, nested, lines[child.lineno - 1]))
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            visit(child, inner)

    visit(tree, False)
    return found


def layer_of(module: str) -> str:
    return module.split(".")[0]


def violations(root: Path) -> list[str]:
    """Every broken rule under `root`, one line each (empty when the layering holds)."""
    modules = project_modules(root)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        rel = path.relative_to(root)
        for target, line, nested, text in imports_of(module, path, modules):
            if RANK[layer_of(target)] > RANK[layer_of(module)]:
                problems.append(f"{rel}:{line}: {layer_of(module)} imports higher layer {target}")
            if nested and LAZY_MARK not in text:
                problems.append(f"{rel}:{line}: project import of {target} inside a function "
                                f"(move it to the top, or say why with '{LAZY_MARK}')")
            if not nested:
                graph[module].add(target)
    problems += [f"import circle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def notebook_violations(root: Path) -> list[str]:
    """Notebooks read results through `analysis` (and `common` for its error type) only."""
    problems = []
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell.get("cell_type") != "code":
                continue
            src = "".join(cell["source"])
            try:
                tree = ast.parse(src)
            except SyntaxError:  # IPython magics: not Python, nothing to check
                continue
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                for name in names:
                    top = name.split(".")[0]
                    if top in RANK and top not in ("analysis", "common"):
                        problems.append(f"{nb.name} cell {i}: imports {name} (notebooks use analysis only)")
    return problems


def test_the_project_imports_one_way_without_circles():
    assert violations(ROOT) == []


def test_notebooks_use_analysis_only():
    assert notebook_violations(ROOT) == []


def _plant(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for layer in LAYERS:
        (root / layer).mkdir(exist_ok=True)
        (root / layer / "__init__.py").touch()
    return root


@pytest.mark.parametrize("files, expected", [
    ({"trees/a.py": "from medusa.b import x\n", "medusa/b.py": "x = 1\n"}, "trees imports higher layer medusa.b"),
    ({"common/a.py": "import analysis.c\n", "analysis/c.py": ""}, "common imports higher layer analysis.c"),
    ({"medusa/a.py": "from medusa import b\n", "medusa/b.py": "from medusa.a import y\n"},
     "import circle: medusa.a -> medusa.b -> medusa.a"),
    ({"bench/a.py": "def f():\n    from trees.t import T\n", "trees/t.py": "T = 1\n"}, "inside a function"),
    ({"bench/a.py": "from . import b\n", "bench/b.py": "from .a import z\n"}, "import circle: bench.a -> bench.b"),
])
def test_checker_catches_planted_violations(tmp_path, files, expected):
    problems = violations(_plant(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_checker_accepts_downward_and_marked_lazy_imports(tmp_path):
    files = {
        "trees/t.py": "from common.e import E\n",
        "common/e.py": "E = 1\n",
        "bench/a.py": "import medusa.m\n\ndef f():\n    from analysis.z import q  # lazy: planted\n",
        "medusa/m.py": "from trees.t import E\n",
        "analysis/z.py": "q = 1\n",
    }
    problems = violations(_plant(tmp_path, files))
    assert [p for p in problems if "higher layer analysis" not in p] == []
    assert any("bench imports higher layer analysis.z" in p for p in problems)


def test_checker_catches_a_notebook_reaching_below_analysis(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["import analysis\n", "from bench.run import main\n"]}]}
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "x.ipynb").write_text(json.dumps(nb))
    assert notebook_violations(tmp_path) == ["x.ipynb cell 0: imports bench.run (notebooks use analysis only)"]
