"""The executable check vocabulary of a constitution, and running it on a response.

Checks are data (a fixed set of kinds), never code. Regular expressions use the ``regex``
package with a time limit, so a pathological pattern fails its check instead of hanging the loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Annotated, Literal, Protocol

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator

from selfimprove.types import CheckResult, passes

__all__ = [
    "REGEX_TIMEOUT_S",
    "Check",
    "ForbidPhrases",
    "ForbidRegex",
    "MaxChars",
    "MaxSentences",
    "MaxWords",
    "MinWords",
    "RequireRegex",
    "count_sentences",
    "count_words",
    "passes",
    "run_check",
    "run_checks",
]

#: seconds one regex search may take before its check counts as failed
REGEX_TIMEOUT_S = 0.5

CheckId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="unique within the constitution's checks (letters, digits, '_', '-', '.')",
    ),
]


class _CheckBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: CheckId
    hard: bool = Field(
        default=True,
        strict=True,
        description="a failed hard check makes the response fail; a soft one is only reported",
    )
    description: str | None = None


class _Limit(_CheckBase):
    value: int = Field(strict=True, ge=0, description="the limit (inclusive)")


class MaxWords(_Limit):
    """At most ``value`` whitespace-separated words."""

    kind: Literal["max_words"]


class MinWords(_Limit):
    """At least ``value`` whitespace-separated words."""

    kind: Literal["min_words"]


class MaxChars(_Limit):
    """At most ``value`` characters."""

    kind: Literal["max_chars"]


class MaxSentences(_Limit):
    """At most ``value`` sentences (see :func:`count_sentences`)."""

    kind: Literal["max_sentences"]


class _RegexCheck(_CheckBase):
    pattern: str = Field(min_length=1, description="a regular expression (Python/regex syntax)")
    ignore_case: bool = Field(default=False, strict=True)
    multiline: bool = Field(default=False, strict=True, description="'^' and '$' match at lines")
    dotall: bool = Field(default=False, strict=True, description="'.' also matches newlines")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            _compile(pattern, 0)
        except regex.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return pattern

    def compiled(self) -> regex.Pattern:
        flags = (
            (regex.IGNORECASE if self.ignore_case else 0)
            | (regex.MULTILINE if self.multiline else 0)
            | (regex.DOTALL if self.dotall else 0)
        )
        return _compile(self.pattern, flags)


class ForbidRegex(_RegexCheck):
    """Fails when ``pattern`` matches anywhere in the response."""

    kind: Literal["forbid_regex"]


class RequireRegex(_RegexCheck):
    """Fails unless ``pattern`` matches somewhere in the response."""

    kind: Literal["require_regex"]


class ForbidPhrases(_CheckBase):
    """Fails when any phrase occurs (case-insensitive, whitespace and apostrophes normalised)."""

    kind: Literal["forbid_phrases"]
    phrases: list[Annotated[str, Field(strict=True, min_length=1)]] = Field(min_length=1)


Check = Annotated[
    MaxWords | MinWords | MaxChars | MaxSentences | ForbidRegex | RequireRegex | ForbidPhrases,
    Field(discriminator="kind"),
]


@lru_cache(maxsize=512)
def _compile(pattern: str, flags: int) -> regex.Pattern:
    return regex.compile(pattern, flags)


def count_words(text: str) -> int:
    """Whitespace-separated tokens."""
    return len(text.split())


_SENTENCE_BREAK = regex.compile(r"(?<=[.!?])\s+|\n+")
_LIST_MARKER = regex.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])\s+", regex.MULTILINE)
_WORDLIKE = regex.compile(r"\w")


def count_sentences(text: str) -> int:
    """Pieces ending in ``.``, ``!`` or ``?`` before whitespace, or separated by a line break.

    Decimals ("3.14") do not split; list items on their own lines count as one sentence each
    (their "1." or "-" markers are not sentences).
    """
    pieces = _SENTENCE_BREAK.split(_LIST_MARKER.sub("", text).strip())
    return sum(1 for piece in pieces if _WORDLIKE.search(piece))


def _normalise(text: str) -> str:
    # Curly apostrophes and line-wrapped phrases should not let a forbidden phrase slip through.
    return " ".join(text.replace("\u2019", "'").replace("\u2018", "'").casefold().split())


def _snippet(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_check(check: Check, text: str, *, regex_timeout: float = REGEX_TIMEOUT_S) -> CheckResult:
    """Run one check on ``text``. Never raises for any text, never runs past the regex limit."""
    passed, detail = _evaluate(check, text, regex_timeout)
    return CheckResult(
        check_id=check.id, kind=check.kind, passed=passed, hard=check.hard, detail=detail
    )


def _at_most(n: int, limit: int, unit: str) -> tuple[bool, str]:
    return (True, f"{n} {unit} <= {limit}") if n <= limit else (False, f"{n} {unit} > {limit}")


def _evaluate(check: Check, text: str, timeout: float) -> tuple[bool, str]:
    match check:
        case MaxWords(value=limit):
            return _at_most(count_words(text), limit, "words")
        case MinWords(value=limit):
            n = count_words(text)
            if n >= limit:
                return True, f"{n} words >= {limit}"
            return False, f"{n} words < {limit}"
        case MaxChars(value=limit):
            return _at_most(len(text), limit, "chars")
        case MaxSentences(value=limit):
            return _at_most(count_sentences(text), limit, "sentences")
        case ForbidRegex() | RequireRegex():
            try:
                found = check.compiled().search(text, timeout=timeout)
            except TimeoutError:
                return False, "regex timed out"
            if isinstance(check, ForbidRegex):
                if found is None:
                    return True, "no match"
                return False, f"matched '{_snippet(found.group())}' at char {found.start()}"
            if found is None:
                return False, f"no match for /{check.pattern}/"
            return True, f"matched '{_snippet(found.group())}' at char {found.start()}"
        case ForbidPhrases(phrases=phrases):
            haystack = _normalise(text)
            hits = [p for p in phrases if _normalise(p) in haystack]
            if not hits:
                return True, "no forbidden phrase"
            return False, "contains " + ", ".join(f"'{p}'" for p in hits)
    raise TypeError(f"unknown check {type(check).__name__}")  # unreachable for validated data


class HasChecks(Protocol):
    """Anything that carries checks (a constitution)."""

    @property
    def checks(self) -> Iterable[Check]: ...


def run_checks(
    checks: Iterable[Check] | HasChecks, text: str, *, regex_timeout: float = REGEX_TIMEOUT_S
) -> list[CheckResult]:
    """Run ``checks`` (or a constitution's checks) on ``text``, in order."""
    items = checks.checks if hasattr(checks, "checks") else checks
    return [run_check(c, text, regex_timeout=regex_timeout) for c in items]  # type: ignore[union-attr]
