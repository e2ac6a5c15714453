"""Judge contract pieces shared by the pairwise and pointwise judges."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from selfimprove.errors import ParseError


class GeneratedChoice(BaseModel):
    """A verdict the judge wrote out instead of one read from option log-probabilities."""

    choice: str


def two_way_probability(logprobs: dict[str, float], first: str, second: str) -> float:
    """P(first) renormalized over the two options."""
    a, b = logprobs[first], logprobs[second]
    top = max(a, b)
    ea, eb = math.exp(a - top), math.exp(b - top)
    return ea / (ea + eb)


def parse_choice(text: str, options: Sequence[str]) -> GeneratedChoice:
    """Read exactly one of ``options`` from generated text, or raise :class:`ParseError`.

    Accepts a bare option ("B"), a short phrase ("Response B is better") or JSON-ish
    ``{"choice": "B"}``; rejects text naming both or neither.
    """
    pattern = r"\b(" + "|".join(re.escape(o) for o in options) + r")\b"
    found = {m.group(1) for m in re.finditer(pattern, text.strip(), flags=re.IGNORECASE)}
    found = {o for o in options if o.lower() in {f.lower() for f in found}}
    if len(found) != 1:
        what = "none" if not found else "several (" + ", ".join(sorted(found)) + ")"
        raise ParseError(f"expected exactly one of {list(options)} in the verdict, found {what}")
    return GeneratedChoice(choice=found.pop())


Choice = Literal["first", "second", "abstain"]
