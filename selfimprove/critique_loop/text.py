"""Text helpers of the critique loop: seeds, failed-check notes, trimming."""

from __future__ import annotations

import hashlib
import re

from selfimprove.types import CheckResult


def prompt_seed(seed: int, prompt_id: str, *salt: object) -> int:
    """A per-prompt seed: stable across runs and independent of batch order."""
    digest = hashlib.sha256(repr((seed, prompt_id, *salt)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def failed_checks_text(checks: list[CheckResult]) -> str:
    """A block naming the failed executable checks, for the critique and revision prompts."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        return ""
    lines = "\n".join(f"- {c.check_id}: {c.detail}" for c in failed)
    return f"\nThe response fails these rules:\n{lines}\n"


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Drop a trailing incomplete sentence (text cut by a token limit); keep at least one."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else text


def word_limit(constitution) -> int | None:
    """The constitution's tightest hard ``max_words`` limit, if it has one."""
    limits = [c.value for c in constitution.checks if c.kind == "max_words" and c.hard]
    return min(limits) if limits else None


def trim_to_words(text: str, limit: int) -> str:
    """The first ``limit`` words, then back to the last full sentence inside them (if any)."""
    words = text.split()
    if len(words) <= limit:
        return text.strip()
    return trim_to_sentence(" ".join(words[:limit]))
