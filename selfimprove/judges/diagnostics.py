"""Reliability of the position-swapped pairwise judge, read off the verdicts it produced.

A small judge model often prefers whichever response it sees first, or puts almost all its
probability near 0.5. Its verdicts then look like a win rate but measure the slot order. These
diagnostics say how often the judge was asked at all, whether it agreed with itself when the
order was swapped, how strongly it leaned to one slot and how far its soft labels moved from
0.5, and flag it as *near chance* when any of these says its verdicts carry little signal.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from selfimprove.types import OrderJudgment, Verdict

__all__ = [
    "MAX_FIRST_SLOT_RATE",
    "MIN_FIRST_SLOT_RATE",
    "MIN_MEAN_MARGIN",
    "MIN_POSITION_CONSISTENCY",
    "JudgeDiagnostics",
    "diagnose",
]

#: below this share of self-agreement across orders the judge is near chance: a judge that
#: picks at random agrees with itself half the time, and one that always picks the same slot
#: never does
MIN_POSITION_CONSISTENCY = 0.6
#: below this mean margin (|p_b - 0.5| * 2) the soft labels hardly leave 0.5 (on average
#: p_b within 0.45..0.55), which is also what a judge that favours one slot in both orders gives
MIN_MEAN_MARGIN = 0.1
#: a judge that chooses the first slot (or the second) four times in five, whatever the
#: responses, is following the order; a position-consistent judge scores exactly 0.5
MAX_FIRST_SLOT_RATE = 0.8
MIN_FIRST_SLOT_RATE = 0.2


class JudgeDiagnostics(BaseModel):
    """How reliable the judge's verdicts were. Shares of all verdicts are 0.0 when there are
    none; statistics over judged pairs are None when the judge was never asked."""

    model_config = ConfigDict(frozen=True)
    n: int = Field(ge=0, description="verdicts")
    decided_by_checks: float = Field(description="share decided by the executable checks")
    judged: int = Field(ge=0, description="verdicts for which the judge was asked in both orders")
    decisive: int = Field(
        ge=0, description="judged verdicts where the judge chose a slot in both orders"
    )
    consistent: int = Field(
        ge=0, description="decisive verdicts whose two orders prefer the same response"
    )
    position_consistency: float | None = Field(
        description="consistent / decisive; None when no pair was decisive"
    )
    flip_rate: float = Field(description="share of verdicts that are ties because the orders flip")
    tie_rate: float = Field(description="share of verdicts whose winner is a tie")
    abstain_rate: float = Field(description="share of verdicts whose winner is abstain")
    first_slot_rate: float | None = Field(
        description="share of the judged orders' choices that were the first slot (position bias)"
    )
    mean_margin: float | None = Field(
        description="mean |p_b - 0.5| * 2 over verdicts with a soft label from the judge"
    )
    near_chance: bool = Field(
        description="at least one pair judged, and position consistency below "
        "MIN_POSITION_CONSISTENCY (or no pair decisive), mean margin below MIN_MEAN_MARGIN, or "
        "first-slot rate outside MIN_FIRST_SLOT_RATE..MAX_FIRST_SLOT_RATE"
    )

    def summary(self) -> str:
        """One plain sentence, e.g. for the run report."""
        if self.n == 0:
            return "there were no verdicts, so nothing is known about the judge."
        if self.judged == 0:
            return (
                f"the judge was asked on none of the {self.n} pairs "
                f"(the checks decided {self.decided_by_checks:.0%}), "
                "so nothing is known about its reliability."
            )
        asked = f"the judge was asked on {self.judged} of {self.n} pairs"
        if self.decisive == 0 or self.position_consistency is None:
            sentence = asked + " but abstained in at least one order on every one"
        else:
            sentence = (
                f"{asked}; it agreed with itself across orders on {self.consistent} of "
                f"{self.decisive} ({self.position_consistency:.0%}) and preferred the first slot "
                f"{self.first_slot_rate:.0%} of the time"
            )
            if self.mean_margin is not None:
                sentence += f", with a mean margin of {self.mean_margin:.2f}"
            if self.judged > self.decisive:
                sentence += f", abstaining in one order or both on {self.judged - self.decisive}"
        if self.near_chance:
            return sentence + ": near chance, its verdicts carry little signal."
        return sentence + ": its verdicts carry signal."


def _preferred(order: OrderJudgment, other: OrderJudgment) -> str:
    # The response an order preferred: its first slot, or the one it showed second, which is the
    # one the swapped order showed first (``PairwiseJudge`` always swaps the two).
    return order.first if order.choice == "first" else other.first


def diagnose(verdicts: Iterable[Verdict]) -> JudgeDiagnostics:
    """Judge reliability over ``verdicts``; see :class:`JudgeDiagnostics` and the thresholds.

    A verdict counts as judged when it holds both orders (also when the checks decided it and
    the judge was asked anyway). Position consistency and first-slot rate use only orders that
    chose a slot; abstentions show in ``decisive`` and ``abstain_rate`` instead.
    """
    verdicts = list(verdicts)
    n = len(verdicts)
    judged = decisive = consistent = first_slot = chosen = 0
    margins: list[float] = []
    for verdict in verdicts:
        if verdict.p_b is not None:
            margins.append(verdict.margin)
        if len(verdict.orders) < 2:
            continue
        judged += 1
        ab, ba = verdict.orders[:2]
        for order in (ab, ba):
            if order.choice != "abstain":
                chosen += 1
                first_slot += order.choice == "first"
        if "abstain" not in (ab.choice, ba.choice):
            decisive += 1
            consistent += _preferred(ab, ba) == _preferred(ba, ab)

    def share(count: int) -> float:
        return count / n if n else 0.0

    consistency = consistent / decisive if decisive else None
    first_slot_rate = first_slot / chosen if chosen else None
    mean_margin = sum(margins) / len(margins) if margins else None
    near_chance = judged > 0 and (
        consistency is None  # asked, yet never chose in both orders: no signal at all
        or consistency < MIN_POSITION_CONSISTENCY
        or (mean_margin is not None and mean_margin < MIN_MEAN_MARGIN)
        or (
            first_slot_rate is not None
            and not MIN_FIRST_SLOT_RATE <= first_slot_rate <= MAX_FIRST_SLOT_RATE
        )
    )
    return JudgeDiagnostics(
        n=n,
        decided_by_checks=share(sum(v.decided_by == "checks" for v in verdicts)),
        judged=judged,
        decisive=decisive,
        consistent=consistent,
        position_consistency=consistency,
        flip_rate=share(sum(v.decided_by == "flip" for v in verdicts)),
        tie_rate=share(sum(v.winner == "tie" for v in verdicts)),
        abstain_rate=share(sum(v.winner == "abstain" for v in verdicts)),
        first_slot_rate=first_slot_rate,
        mean_margin=mean_margin,
        near_chance=near_chance,
    )
