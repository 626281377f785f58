"""The layers of docs/architecture.md import one way, and no two files import each other.

Every module's imports are read with ``ast``, those inside functions included (kilotune imports
its heavy modules where they are used), so a lazy import cannot hide an upward one.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A folder is a layer (its subfolders too), lowest first; a module may import its own layer and the layers below it.
LAYERS = ("models", "subset", "training", "search", "workers", "cli")


def layer_of(module: str) -> str:
    """The layer of ``kilotune.<folder>...`` (or ``kilotune``, ``kilotune.__main__``): its top folder."""
    parts = module.split(".")[1:]
    if not parts:
        return "workers"  # the package's Python API (kilotune.run, ...) is workers/api.py's
    if parts[0] == "__main__":
        return "cli"
    if parts[0] in LAYERS:
        return parts[0]
    raise AssertionError(f"{module} is in no layer: a top-level folder of the package is one of {LAYERS} (docs/architecture.md)")


@functools.cache
def modules() -> dict[str, Path]:
    """Every kilotune module by its dotted name: the package's own files and every file of its
    top-level folders (those with an ``__init__.py``), subfolders included."""
    found = {"kilotune": REPO / "__init__.py", "kilotune.__main__": REPO / "__main__.py"}
    for package in sorted(p.parent for p in REPO.glob("*/__init__.py") if p.parent.name != "tests"):
        for path in sorted(package.rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(("kilotune", *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kilotune modules ``name`` imports, anywhere in the file (relative imports resolved;
    ``from kilotune.x import y`` counts as ``kilotune.x.y`` where that is a module)."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kilotune"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("kilotune"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, set(known)) for name, path in known.items()}


def test_every_module_is_in_a_layer():
    for name in modules():
        assert layer_of(name) in LAYERS


def test_no_import_goes_up_a_layer(graph):
    upward = [f"{m} ({layer_of(m)}) imports {i} ({layer_of(i)})" for m, imported in sorted(graph.items())
              for i in sorted(imported) if LAYERS.index(layer_of(i)) > LAYERS.index(layer_of(m))]
    assert upward == [], "imports from a lower layer to a higher one (docs/architecture.md)"


def test_no_two_files_import_each_other_in_a_circle(graph):
    # A package's __init__ is left out: importing a submodule runs it, which is no circle of files.
    edges = {m: {i for i in imported if not _is_package(i)} for m, imported in graph.items() if not _is_package(m)}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges.get(module, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [module, nxt]) if nxt in path else f"{module} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert circles == [], "import circles between files"


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    known = {"kilotune.models", "kilotune.models.names", "kilotune.cli", "kilotune.cli.main", "kilotune.search.study"}
    source = tmp_path / "m.py"
    source.write_text("from .names import ARCHITECTURES\ndef f():\n    from kilotune.cli import main\n    import kilotune.search.study\n")
    assert imports("kilotune.models.m", source, known) == {"kilotune.models.names", "kilotune.cli.main", "kilotune.search.study"}


def test_architecture_doc_names_every_layer():
    text = (REPO / "docs" / "architecture.md").read_text()
    for layer in LAYERS:
        assert f"`{layer}/`" in text


def test_every_folder_is_a_package_pyproject_installs():
    """``pip install .`` (the Docker image) installs only the packages pyproject lists."""
    text = (REPO / "pyproject.toml").read_text()
    listed = text.split("packages = [", 1)[1].split("]", 1)[0]
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert packages == {p.strip().strip('"') for p in listed.split(",") if p.strip()}


def test_nothing_below_the_cli_sees_argparse():
    """The options are dataclasses (search/settings.py); only cli/ turns them into a parser."""
    below = [name for name, path in modules().items() if layer_of(name) != "cli"
             and any(isinstance(node, (ast.Import, ast.ImportFrom)) and "argparse" in ast.unparse(node) for node in ast.walk(ast.parse(path.read_text())))]
    assert below == []


def test_no_product_file_is_over_400_lines():
    long = {str(path.relative_to(REPO)): n for path in modules().values() if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}, "split it by concern"
