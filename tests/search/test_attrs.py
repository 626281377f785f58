"""Every user-attribute key of the study format is defined once and documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from kilotune.search import attrs
from kilotune.search.study import StudySettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "study-format.md"


def constants() -> dict[str, str]:
    return {name: value for name, value in vars(attrs).items() if name.isupper() and isinstance(value, str)}


def test_every_key_is_listed_in_study_format():
    documented = set(re.findall(r"`([a-z_]+)`", DOC.read_text()))
    missing = {name: key for name, key in constants().items() if key not in documented}
    assert missing == {}, "keys in search/attrs.py that docs/study-format.md does not list"


def test_the_key_lists_hold_every_constant_once():
    keys = [*attrs.STUDY_KEYS, *attrs.TRIAL_KEYS]
    assert sorted(keys) == sorted(constants().values()) and len(set(keys)) == len(keys)


def test_study_keys_are_the_settings_recorded():
    assert {f.name for f in dataclasses.fields(StudySettings)} | {attrs.BUDGET_HISTORY} == set(attrs.STUDY_KEYS)
