"""The architectures and activations the models build: names only, so the training
configuration (training/config.py) and the search space validate against them without Keras.
And how names and values read in what a user is told (``listing``, ``shown``; counts: subset/files.count_of)."""

from __future__ import annotations

from collections.abc import Iterable

ARCHITECTURES: tuple[str, ...] = ("vgg8", "vgg16", "resnet9", "resnet18", "resnet20", "wrn")
ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "gelu", "silu")  # keras.activations names
# How an ensemble's members are chosen (search/ensemble.py), the default first; here, light, for the command line.
ENSEMBLE_SELECTIONS: tuple[str, ...] = ("top", "greedy", "seeds")
# The shape fields an architecture reads beyond width (models/registry.py's builders); the others ignore them.
SHAPE_FIELDS: dict[str, tuple[str, ...]] = {"resnet20": ("depth",), "wrn": ("depth", "widen_factor")}


def ignored_fields(arch: str) -> tuple[str, ...]:
    """The configuration's shape fields ``arch`` does not read: a user shown a config is told so."""
    fields = dict.fromkeys(f for read in SHAPE_FIELDS.values() for f in read)  # each once, in order
    return tuple(f for f in fields if f not in SHAPE_FIELDS.get(arch, ()))


def listing(values: Iterable[object], last: str = "or") -> str:
    """``a, b or c`` (``last="and"``: ``a, b and c``): values as a user reads them, not a Python list."""
    words = [str(v) for v in values]
    if len(words) < 2:
        return words[0] if words else "none"
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def shown(value: object, width: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``width`` characters: a value as a message names it."""
    text = " ".join(repr(value).split())
    return text if len(text) <= width else f"{text[: width - 3]}..."


def described(error: Exception) -> str:
    """An error as one line for a user: its message; an OSError's reason and the path(s) it concerns."""
    if isinstance(error, OSError) and error.filename is not None:
        paths = " -> ".join(repr(str(p)) for p in (error.filename, error.filename2) if p is not None)
        text = f"{error.strerror or type(error).__name__}: {paths}"
    else:
        text = str(error)
    return " ".join(text.split()) or type(error).__name__
