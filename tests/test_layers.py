"""The architecture, read from the imports (issue 23): three layers and no circles.

    monosemantic/   the command line, the pipeline and the study: imports trainer and app
    app/            the browser and its JSON: imports from trainer only what it serves
    trainer/        every stage of a run: imports neither app nor monosemantic

Every `import` and `from ... import` of the three packages counts, at module level or inside a
function, except those under `if TYPE_CHECKING:` (annotations only, never run). `from p import m`
of a submodule m is an arrow to p.m; of any other name, an arrow to p (so a module that takes a
function from its own package's `__init__`, which imports that module, is a circle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("monosemantic", "trainer", "app")

# What app may take from trainer: the schema/store contract, and the model and SAE code that the
# live pages (steering, inference, case studies) run.
APP_MAY_IMPORT = {
    "trainer.store.schema",
    "trainer.config",
    "trainer.lm.model",
    "trainer.lm.hooks",
    "trainer.lm.hf_model",
    "trainer.corpus.tokenizer",
    "trainer.sae",
    "trainer.lm.steering",
    "trainer.analysis.proxies",
}


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_names(path: Path, module: str, modules: set[str]) -> Iterator[str]:
    """Every module name an import statement of `path` takes something from (relative imports
    resolved; `from p import m` names p.m where that is a module, else p)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield submodule if submodule in modules else source


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module → the modules of `packages` it imports (the longest known prefix of each name)."""
    modules = module_files(root, packages)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {known(name) for name in imported_names(path, module, set(modules))}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def arrows(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        if a.split(".")[0] == source
        for b in targets
        if b.split(".")[0] == target
    )


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def test_trainer_imports_neither_app_nor_the_command_line(graph: dict[str, set[str]]) -> None:
    assert arrows(graph, "trainer", "app") == []
    assert arrows(graph, "trainer", "monosemantic") == []


def test_app_never_imports_the_command_line(graph: dict[str, set[str]]) -> None:
    assert arrows(graph, "app", "monosemantic") == []


def test_app_takes_from_trainer_only_what_it_serves(graph: dict[str, set[str]]) -> None:
    taken = {
        b for a, targets in graph.items() if a.startswith("app") for b in targets if b.startswith("trainer")
    }
    assert sorted(taken - APP_MAY_IMPORT) == []


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    assert circles(graph) == []


def test_the_reader_sees_circles_and_arrows_back_up(tmp_path: Path) -> None:
    """The checks above could not pass by reading nothing: a planted tree with a circle through a
    function-level import, an arrow from trainer to app and a type-only import (not an arrow)."""
    files = {
        "trainer/__init__.py": "",
        "trainer/a.py": "from trainer.b import thing\n",
        "trainer/b.py": "def f():\n    from trainer import a\n",
        "trainer/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.x import Y\n",
        "trainer/d.py": "from .c import z\nimport app.x\n",
        "trainer/pkg/__init__.py": "from trainer.pkg.base import B\nfrom trainer.pkg.other import C\n",
        "trainer/pkg/base.py": "def f():\n    from trainer.pkg import helper\n",
        "trainer/pkg/other.py": "from trainer.pkg import base\n",
        "app/__init__.py": "",
        "app/x.py": "",
        "monosemantic/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    planted = import_graph(tmp_path)
    assert sorted(circles(planted)) == [
        ["trainer.a", "trainer.b"],
        ["trainer.pkg", "trainer.pkg.base", "trainer.pkg.other"],
    ]
    assert planted["trainer.pkg.other"] == {"trainer.pkg.base"}
    assert arrows(planted, "trainer", "app") == ["trainer.d -> app.x"]
    assert planted["trainer.d"] == {"trainer.c", "app.x"}
    assert planted["trainer.c"] == set()
