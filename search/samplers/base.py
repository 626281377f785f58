"""A sampler a study can name: the Optuna sampler it makes from the study's settings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import optuna


class Seeded(Protocol):
    """What a sampler reads of a study's settings (``search.settings.StudySettings``)."""

    seed: int | None


class Sampler(ABC):
    """One sampler of ``SAMPLERS``: stateless, so one instance serves every study."""

    name: ClassVar[str]  # what ``--sampler`` takes and the study records
    help: ClassVar[str]  # a few words for ``--sampler``'s help

    @abstractmethod
    def make(self, settings: Seeded) -> optuna.samplers.BaseSampler:
        """The Optuna sampler of a study with these settings (seeded with ``settings.seed``)."""
