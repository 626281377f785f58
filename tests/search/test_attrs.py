"""Every user-attribute key of the study format is defined once and documented."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from kilotune.search import attrs
from kilotune.search.settings import StudySettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "study-format.md"


def constants() -> dict[str, str]:
    return {name: value for name, value in vars(attrs).items() if name.isupper() and isinstance(value, str)}


def test_every_key_is_listed_in_study_format():
    documented = set(re.findall(r"`([a-z_]+)`", DOC.read_text()))
    missing = {name: key for name, key in constants().items() if key not in documented}
    assert missing == {}, "keys in search/attrs.py that docs/study-format.md does not list"


def test_the_key_lists_hold_every_constant_once():
    keys = [*attrs.STUDY_KEYS, *attrs.STUDY_SYSTEM_KEYS, *attrs.TRIAL_KEYS]
    assert sorted(keys) == sorted(constants().values()) and len(set(keys)) == len(keys)


def test_study_keys_are_the_settings_recorded():
    assert {f.name for f in dataclasses.fields(StudySettings)} | {attrs.BUDGET_HISTORY, attrs.CV_STUDY_OF} == set(attrs.STUDY_KEYS)


PACKAGE = Path(__file__).resolve().parents[2]
WRITES = {"set_user_attr", "set_system_attr"}
ATTRIBUTE_DICTS = {"attrs", "user_attrs", "system_attrs"}  # a study's or trial's, or a local alias of them


def _is_attribute_dict(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in ATTRIBUTE_DICTS) or (isinstance(node, ast.Name) and node.id in ATTRIBUTE_DICTS)


def _literal_keys(path: Path) -> list[str]:
    """The study-format keys ``path`` spells as string literals where it reads or writes an
    attribute: ``x.set_user_attr("key", ...)``, ``attrs.get("key")``, ``user_attrs["key"]``."""
    known = set(constants().values())
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args and (
            node.func.attr in WRITES or (node.func.attr == "get" and _is_attribute_dict(node.func.value))
        ):
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_attribute_dict(node.value):
            key = node.slice
        if isinstance(key, ast.Constant) and key.value in known:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {key.value!r}")
    return found


def test_the_package_names_attribute_keys_by_their_constants():
    files = [p for d in ("search", "workers", "cli", "subset", "models") for p in (PACKAGE / d).glob("*.py")]
    spelled = [hit for p in files if p.name != "attrs.py" for hit in _literal_keys(p)]
    assert spelled == [], "use the constants of search/attrs.py"
