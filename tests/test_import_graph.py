"""No module of jntk_dist imports one that imports it back: the file-level import graph (every
import statement, at module level or inside a function, absolute or relative, ``from . import x``
resolved to the submodule x) has no cycle. lint-imports checks the rooms; this checks the files
inside them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jntk_dist"


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of a dotted name that is a module of the package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules that one module's import statements name, anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:  # a submodule, else a name in the module `prefix`
                submodule = f"{prefix}.{alias.name}"
                found.add(submodule if submodule in modules else prefix)
    resolved = {_resolve(name, modules) for name in found}
    return {m for m in resolved if m is not None and m != module}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module name → the package's modules it imports (a package's module is its ``__init__``)."""
    paths = {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    modules = set(paths)
    return {name: _imported(ast.parse(path.read_text(), str(path)), name,
                            path.name == "__init__.py", modules)
            for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path a → b → … → a, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one_that_is_there() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_graph_sees_lazy_relative_absolute_and_submodule_imports(tmp_path: Path) -> None:
    files = {"__init__.py": "from . import a\n",
             "a.py": "def f():\n    from .sub import b\n",
             "sub/__init__.py": "",
             "sub/b.py": "import pkg.a\n",
             "sub/c.py": "from . import b\nfrom pkg.sub import NAME\n",
             "sub/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from ..sub.c import X\n"}
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(),
                     "pkg.sub.b": {"pkg.a"}, "pkg.sub.c": {"pkg.sub.b", "pkg.sub"},
                     "pkg.sub.d": {"pkg.sub.c"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_no_module_imports_one_that_imports_it_back() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "file-level import circle: " + " → ".join(cycle or [])
