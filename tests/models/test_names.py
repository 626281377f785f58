"""How names, counts and values read in what a user is told (issue 25: no Python lists)."""

import numpy as np

from kilotune.models.names import listing, shown


def test_names_read_as_a_sentence_not_a_python_list():
    assert listing(["small"]) == "small"
    assert listing(("tpe", "random")) == "tpe or random"
    assert listing(["a", "b", "c"], "and") == "a, b and c"
    assert listing([]) == "none"


def test_a_value_is_shown_on_one_short_line():
    assert shown("x") == "'x'" and shown(5) == "5"
    long = shown(np.zeros((40, 40)))
    assert "\n" not in long and len(long) == 60 and long.endswith("...")
