"""Every option's default is declared once: where its field says it (search/settings.py), or where
that field takes it from (``TrainConfig``'s, for ``epochs``), and nowhere else in the product.

The product's files are read with ``ast``: a function parameter's literal default, an
``add_argument(..., default=...)`` (named by its ``dest`` or flag), and a class body's annotated
field (``epochs: int = 40``, ``field(default=...)``, ``option(...)``). None and False are no
default to repeat: they mean "not given" and "off"; an option whose default is None is not
checked (``seed``, ``storage``...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dataclasses import fields

from kilotune.search.settings import ExportOptions, ReportOptions, RunOptions, StudySettings, options_of
from kilotune.training.config import RetrainOptions
from tests.test_layers import REPO, modules

# The options with a default to repeat, by name: not those whose default is None (no seed, no
# storage given...), a name other things share with another meaning (a subset's selection seed).
NAMES = {name for owner in (StudySettings, RunOptions) for name, f in options_of(owner).items() if f.default is not None}
# The output commands' options (export, report, retrain): plain dataclasses, no command-line metadata.
NAMES |= {f.name for owner in (ExportOptions, ReportOptions, RetrainOptions) for f in fields(owner) if f.default is not None}
# Where a name means another option: `kilotune subset compare --seeds` (training seeds per subset).
OTHER_MEANINGS = {("seeds", "cli/subset.py")}


def literal(node: ast.expr | None) -> tuple[bool, object]:
    """Whether ``node`` is a literal default that sets something, and its value."""
    try:
        value = ast.literal_eval(node) if node is not None else None
    except ValueError:
        return False, None
    return value is not None and value is not False, value


def declared_defaults(path: Path) -> list[tuple[str, str, object]]:
    """``(name, where, value)`` of every literal default declared in a file."""
    found = []

    def add(name: str, node: ast.expr | None, line: int) -> None:
        is_literal, value = literal(node)
        if is_literal:
            found.append((name, f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{line}", value))

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            positional = [*node.args.posonlyargs, *node.args.args]
            for arg, default in zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults):
                add(arg.arg, default, default.lineno)
            for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults):
                add(arg.arg, default, arg.lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                    value = item.value
                    if isinstance(value, ast.Call) and ast.unparse(value.func) in ("field", "option", "dataclasses.field"):
                        given = {k.arg: k.value for k in value.keywords}
                        value = given.get("default", value.args[0] if value.args else None)
                    add(item.target.id, value, item.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            given = {k.arg: k.value for k in node.keywords}
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
            dest = given["dest"].value if isinstance(given.get("dest"), ast.Constant) else flags[0][2:].replace("-", "_") if flags else None
            if dest and "default" in given:
                add(dest, given["default"], node.lineno)
    return found


PRODUCT = sorted(set(modules().values()))


def second_declarations(paths: list[Path]) -> dict[str, list[str]]:
    """The options whose default is declared more than once in ``paths``: where each declaration is."""
    where: dict[str, list[str]] = {}
    for path in paths:
        for name, place, value in declared_defaults(path):
            if name in NAMES and (name, place.split(":")[0]) not in OTHER_MEANINGS:
                where.setdefault(name, []).append(f"{place} ({value!r})")
    return {name: places for name, places in where.items() if len(places) > 1}


def test_every_options_default_is_declared_once():
    assert second_declarations(PRODUCT) == {}


def test_the_settings_declare_the_defaults_and_take_epochs_from_the_training_config():
    places = {name: place for path in PRODUCT for name, place, _ in declared_defaults(path)}
    assert places["val_fraction"].startswith("search/settings.py") and places["workers"].startswith("search/settings.py")
    assert places["epochs"].startswith("training/config.py"), "a trial's epochs default to a training run's"


@pytest.mark.parametrize("source", [
    "def run(epochs: int = 40):\n    pass\n",
    "def run(*, val_fraction: float = 0.2, workers=2):\n    pass\n",
    "import argparse\nargparse.ArgumentParser().add_argument('--epochs', type=int, default=40)\n",
    "import argparse\nargparse.ArgumentParser().add_argument('--pruner', dest='pruner', default='median')\n",
    "class Options:\n    epochs: int = 40\n",
    "class Options:\n    workers: int = field(default=4)\n",
    "def retrain(*, seeds: int = 1, snapshots: int = 0, top: int = 10):\n    pass\n",
    "import argparse\nargparse.ArgumentParser().add_argument('--rank', type=int, default=1)\n",
])  # fmt: skip
def test_a_second_declaration_is_found(tmp_path, source):
    """The check is not vacuous: each kind of declaration is found beside the product's own."""
    planted = tmp_path / "m.py"
    planted.write_text(source)
    found = second_declarations([*PRODUCT, planted])
    assert {n for n in ("epochs", "val_fraction", "workers", "pruner", "seeds", "top", "rank") if n in source} <= set(found), found
