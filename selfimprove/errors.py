"""Typed errors. Every error a user can cause says what is wrong and where."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class SelfImproveError(Exception):
    """Base class for errors raised by selfimprove."""


class ConfigError(SelfImproveError):
    """A YAML file (constitution or run config) is invalid.

    The message always names the file, and where known the line and the field.
    """

    def __init__(
        self, path: str | Path, message: str, line: int | None = None, field: str | None = None
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.detail = message
        where = self.path + (f":{line}" if line is not None else "")
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}")


class ConfigErrors(ConfigError):
    """Several errors in one file, one a line in file order; the first is the error's own
    path, line and field."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.detail, line=first.line, field=first.field)
        self.errors = list(errors)
        self.args = ("\n".join(str(e) for e in self.errors),)


class ModelNotFoundError(SelfImproveError):
    """A model argument could not be resolved; the message lists what was tried."""


class BackendError(SelfImproveError):
    """A backend call failed for good (after any retries)."""


class PromptTooLongError(BackendError):
    """A prompt does not fit the model's context (with the tokens asked for)."""


class ParseError(SelfImproveError):
    """A model output could not be parsed into the pydantic model code relies on."""


class StoreError(SelfImproveError):
    """The preference store refused a write or could not be read."""


class PolicyError(SelfImproveError):
    """A policy version is missing or corrupt."""


class TrainingError(SelfImproveError):
    """A training step failed (e.g. its processes under ``accelerate launch`` exited non-zero)."""
