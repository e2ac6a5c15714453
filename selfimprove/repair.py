"""Mechanical repairs: the smallest edit that makes a response pass a failed check.

Some verifiable instructions have an exact fix that keeps the answer's content: lowercase it,
put the required opening words first, add the required closing words, reflow its sentences into
the asked number of bullet points or paragraphs, wrap it in quotes, drop its commas, or wrap it
as a JSON object. With ``critique.reviser: repair`` the refine step applies these fixes where
every failed check has one, and asks the reviser model only where some failed check has none
(``include_words``, length limits, regular expressions, phrases): those need new content or
less of it, and cutting an answer short is no fix.

A repair never invents content and never truncates: a response whose sentences are too few for
the asked number of bullet points stays unrepaired. Repairs run in a fixed order (structure,
then the edges, then character-level rules, then wrapping) so that one fix does not undo
another, and the result must pass every hard check or it is not used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import regex

from selfimprove.checks import (
    BulletCount,
    Check,
    EndsWith,
    JsonObject,
    Lowercase,
    NoCommas,
    ParagraphCount,
    Quoted,
    StartsWith,
    run_check,
    run_checks,
)
from selfimprove.types import passes

__all__ = ["REPAIRABLE_KINDS", "Repair", "repair_response"]

_SENTENCE_END = regex.compile(r"(?<=[.!?])\s+")
_LIST_MARKER = regex.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])\s+")
_COMMA = regex.compile(r"\s*[,\uff0c]\s*")
_TERMINAL = ".!?"


def _sentences(text: str) -> list[str]:
    """The response's sentences, list markers and line structure removed."""
    pieces: list[str] = []
    for line in text.splitlines():
        line = _LIST_MARKER.sub("", line).strip()
        if not line:
            continue
        # A heading or list item without final punctuation still ends where its line does.
        pieces.extend(p.strip() for p in _SENTENCE_END.split(line) if p.strip())
    return pieces


def _target(low: int | None, high: int | None, available: int) -> int | None:
    """How many blocks to make of ``available`` sentences for a ``low..high`` range."""
    want = low if low is not None else min(available, high or available)
    want = max(want, 1)
    if high is not None and want > high:
        return None
    return want if want <= available else None


def _groups(sentences: Sequence[str], n: int) -> list[str]:
    """``sentences`` in ``n`` consecutive groups as even as possible, each one line of text."""
    size, extra = divmod(len(sentences), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(" ".join(sentences[start:end]))
        start = end
    return out


def _reflow(check: BulletCount | ParagraphCount, text: str) -> str | None:
    """The sentences in as many bullet points or paragraphs as ``check`` asks for."""
    sentences = _sentences(text)
    n = _target(check.min, check.max, len(sentences))
    if n is None:
        return None
    groups = _groups(sentences, n)
    if isinstance(check, BulletCount):
        return "\n".join(f"- {g}" for g in groups)
    return "\n\n".join(groups)


def _starts_with(check: StartsWith, text: str) -> str:
    value = check.value.strip()
    body = text.lstrip()
    if body[:1] in "-*\u2022" or body[:1].isdigit():
        return f"{value}:\n{body}"  # a list reads best under its opening words
    joint = ":" if value[-1].isalnum() else ""
    return f"{value}{joint} {body}"


def _ends_with(check: EndsWith, text: str) -> str:
    value = check.value.strip()
    body = text.rstrip()
    if body and body[-1] not in _TERMINAL:
        body += "."
    # A new sentence starts with a capital unless the value is lowercase on purpose (a
    # `lowercase` check runs after this one and lowers it anyway).
    return f"{body} {value[0].upper()}{value[1:]}" if value[0].islower() else f"{body} {value}"


def _no_commas(_check: NoCommas, text: str) -> str:
    return _COMMA.sub(" ", text)


def _quoted(_check: Quoted, text: str) -> str:
    return f'"{text.strip()}"'


def _json_object(_check: JsonObject, text: str) -> str | None:
    # An answer with braces or a code fence tried to write JSON and failed: wrapping its broken
    # attempt in a string teaches nonsense. Prose becomes the object's one value.
    if "{" in text or "```" in text:
        return None
    return json.dumps({"summary": text.strip()}, ensure_ascii=False)


def _lowercase(_check: Lowercase, text: str) -> str:
    return text.lower()


_Fix = Callable[[Check, str], "str | None"]

#: repairs in the order they run: structure first, edges next, characters, wrapping last
_FIXES: dict[str, _Fix] = {
    "bullet_count": _reflow,  # type: ignore[dict-item]
    "paragraph_count": _reflow,  # type: ignore[dict-item]
    "starts_with": _starts_with,  # type: ignore[dict-item]
    "ends_with": _ends_with,  # type: ignore[dict-item]
    "no_commas": _no_commas,  # type: ignore[dict-item]
    "quoted": _quoted,  # type: ignore[dict-item]
    "json_object": _json_object,  # type: ignore[dict-item]
    "lowercase": _lowercase,  # type: ignore[dict-item]
}

#: check kinds that have a mechanical repair
REPAIRABLE_KINDS: frozenset[str] = frozenset(_FIXES)


@dataclass(frozen=True)
class Repair:
    """A repaired response and the ids of the checks whose fixes made it pass."""

    text: str
    fixed: tuple[str, ...]


def repair_response(checks: Sequence[Check], text: str) -> Repair | None:
    """The response with every failed hard check mechanically fixed, or None when some failed
    hard check has no fix (or its fix does not apply) or the result still fails a hard check.

    Fixes run kind by kind in a fixed order, each on a check that fails at that point, so a
    check that an earlier fix broke (opening words moved by a reflow into bullets) is fixed
    too. A response that passes every hard check is returned unchanged with no fixes.
    """
    if not text.strip():
        return None
    failed = [r for r in run_checks(checks, text) if r.hard and not r.passed]
    if not failed:
        return Repair(text=text, fixed=())
    if any(r.kind not in _FIXES for r in failed):
        return None
    fixed: list[str] = []
    for kind, fix in _FIXES.items():
        for check in checks:
            if check.kind != kind or not check.hard or run_check(check, text).passed:
                continue
            out = fix(check, text)
            if out is None:
                return None
            text = out
            fixed.append(check.id)
    return Repair(text=text, fixed=tuple(fixed)) if passes(run_checks(checks, text)) else None
