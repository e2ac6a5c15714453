"""Small helpers shared by nodes."""

from __future__ import annotations

import hashlib

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
