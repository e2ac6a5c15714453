"""Stable identifiers derived from content."""

from __future__ import annotations

import hashlib


def prompt_id(prompt: str) -> str:
    """A short stable id for a prompt text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]
