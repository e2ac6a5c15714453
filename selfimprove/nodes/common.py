"""Small helpers shared by nodes."""

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


def word_budget_tokens(constitution, default: int) -> int:
    """A reviser token budget that fits the constitution's tightest ``max_words`` check.

    About one token per word leaves room for the ~1.3 tokens/word of English text to land
    under the limit once the cut-off sentence is trimmed.
    """
    limits = [c.value for c in constitution.checks if c.kind == "max_words" and c.hard]
    return min([default, *limits]) if limits else default
