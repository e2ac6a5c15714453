"""Two versions' answers to the same prompts, compared prompt by prompt.

"v2 passes every check on 20 of 73 prompts, v0 on 14" says less than it seems: the versions
answer the same prompts, so what counts is how many prompts each gained and lost. The exact
McNemar test (a sign test on the prompts where the two differ) says how often a gain at least
that lopsided comes from versions that are equally good, which on a few dozen prompts is often.
"""

from __future__ import annotations

from math import comb

from pydantic import BaseModel, Field

from selfimprove.evaluation import PolicyEval

__all__ = [
    "KindPairs", "PairedPasses", "kind_pairs", "mcnemar_exact", "paired_or_none", "paired_passes"
]


class PairedPasses(BaseModel):
    """How ``other`` compares with ``base`` on passing every check of the same prompts."""

    base: str
    other: str
    prompts: int
    base_passes: int
    other_passes: int
    gained: int = Field(description="prompts only `other` passes")
    lost: int = Field(description="prompts only `base` passes")
    p_value: float = Field(description="exact two-sided McNemar test on gained against lost")

    def split(self) -> str:
        """``gained 9, lost 3; McNemar p = 0.15``."""
        return f"gained {self.gained}, lost {self.lost}; McNemar p = {self.p_value:.2g}"

    def summary(self) -> str:
        """One line: ``v2 20 vs v0 14 of 73 (gained 9, lost 3; McNemar p = 0.15)``."""
        return (f"{self.other} {self.other_passes} vs {self.base} {self.base_passes} of "
                f"{self.prompts} ({self.split()})")


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: the chance, if each differing prompt went either way
    with probability 1/2, of a split at least as uneven as ``gained`` against ``lost``."""
    if gained < 0 or lost < 0:
        raise ValueError(f"counts must not be negative, got {gained} and {lost}")
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_passes(base: PolicyEval, other: PolicyEval) -> PairedPasses:
    """Compare two evaluations of the same prompts, in the same order."""
    if base.prompts != other.prompts or len(base.passes_checks) != len(other.passes_checks):
        raise ValueError(f"{base.version} and {other.version} were not evaluated on the same "
                         f"prompts ({len(base.prompts)} and {len(other.prompts)})")
    pairs = list(zip(base.passes_checks, other.passes_checks, strict=True))
    gained = sum(o and not b for b, o in pairs)
    lost = sum(b and not o for b, o in pairs)
    return PairedPasses(
        base=base.version, other=other.version, prompts=len(pairs),
        base_passes=sum(base.passes_checks), other_passes=sum(other.passes_checks),
        gained=gained, lost=lost, p_value=mcnemar_exact(gained, lost),
    )


def paired_or_none(base: PolicyEval, other: PolicyEval) -> PairedPasses | None:
    """:func:`paired_passes`, or None where the two answered other prompts (nothing to pair)."""
    try:
        return paired_passes(base, other)
    except ValueError:
        return None


class KindPairs(BaseModel):
    """One check kind, prompt by prompt, over the answers it was run on in both versions."""

    answers: int
    gained: int = Field(description="answers of this kind only `other` passes")
    lost: int = Field(description="answers of this kind only `base` passes")

    @property
    def drop(self) -> float:
        """How far the kind's pass rate fell from ``base`` to ``other`` (negative: it rose)."""
        return (self.lost - self.gained) / self.answers if self.answers else 0.0

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.gained, self.lost)


def kind_pairs(base: PolicyEval, other: PolicyEval) -> dict[str, KindPairs] | None:
    """Each check kind's gains and losses from ``base`` to ``other``; None where they cannot
    be paired (other prompts, or a record from before evaluations kept ``kind_results``)."""
    n = len(base.prompts)
    if (not n or base.prompts != other.prompts or len(base.kind_results) != n
            or len(other.kind_results) != n):
        return None
    tally: dict[str, list[int]] = {}
    for b, o in zip(base.kind_results, other.kind_results, strict=True):
        for kind in b.keys() & o.keys():
            t = tally.setdefault(kind, [0, 0, 0])
            t[0] += 1
            t[1] += o[kind] and not b[kind]
            t[2] += b[kind] and not o[kind]
    return {kind: KindPairs(answers=a, gained=g, lost=lo)
            for kind, (a, g, lo) in sorted(tally.items())}
