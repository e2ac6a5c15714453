"""Judge diagnostics over verdicts built by the pairwise judge's own combine / checks_verdict."""

from __future__ import annotations

import pytest

from selfimprove.judges.diagnostics import (
    MAX_FIRST_SLOT_RATE,
    MIN_FIRST_SLOT_RATE,
    MIN_MEAN_MARGIN,
    MIN_POSITION_CONSISTENCY,
    JudgeDiagnostics,
    diagnose,
)
from selfimprove.judges.pairwise import checks_verdict, combine
from selfimprove.types import OrderJudgment, Verdict


def order(first: str, choice: str, p_first: float | None = None) -> OrderJudgment:
    """One order; with ``p_first`` it is a log-prob judgment, without it a generated one."""
    if choice == "abstain" and p_first is None:
        return OrderJudgment(first=first, choice="abstain", method="abstain")
    if p_first is None:
        p_first = 1.0 if choice == "first" else 0.0
        return OrderJudgment(first=first, p_first=p_first, choice=choice, method="generated")
    return OrderJudgment(first=first, p_first=p_first, choice=choice, method="logprob")


def judged(ab_choice: str, ba_choice: str, ab_p=None, ba_p=None, *, labels=("a", "b"),
           a_passes: bool = True, b_passes: bool = True) -> Verdict:
    """A verdict from both orders: ``ab`` shows labels[0] first, ``ba`` shows labels[1] first."""
    return combine(
        order(labels[0], ab_choice, ab_p), order(labels[1], ba_choice, ba_p),
        a_passes=a_passes, b_passes=b_passes,
    )


def b_consistently(p: float = 0.9) -> Verdict:
    # Order ab puts b second and picks it; order ba puts b first and picks it.
    return judged("second", "first", 1 - p, p)


def first_slot_always(p: float = 0.9) -> Verdict:
    return judged("first", "first", p, p)


def test_thresholds():
    assert MIN_POSITION_CONSISTENCY == 0.6
    assert MIN_MEAN_MARGIN == 0.1
    assert (MIN_FIRST_SLOT_RATE, MAX_FIRST_SLOT_RATE) == (0.2, 0.8)


def test_no_verdicts():
    diag = diagnose([])
    assert diag == JudgeDiagnostics(
        n=0, decided_by_checks=0.0, judged=0, decisive=0, consistent=0,
        position_consistency=None, flip_rate=0.0, tie_rate=0.0, abstain_rate=0.0,
        first_slot_rate=None, mean_margin=None, near_chance=False,
    )
    assert diag.summary() == "there were no verdicts, so nothing is known about the judge."


def test_a_consistent_judge_carries_signal():
    verdicts = [b_consistently(0.9), b_consistently(0.8), judged("first", "second", 0.7, 0.2)]
    assert [v.winner for v in verdicts] == ["b", "b", "a"]
    diag = diagnose(iter(verdicts))  # any iterable, read once
    assert diag.n == diag.judged == diag.decisive == diag.consistent == 3
    assert diag.position_consistency == 1.0
    assert diag.first_slot_rate == 0.5
    # margins: p_b 0.9 -> 0.8, p_b 0.8 -> 0.6, p_b (0.3 + 0.2) / 2 = 0.25 -> 0.5
    assert diag.mean_margin == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert (diag.flip_rate, diag.tie_rate, diag.abstain_rate, diag.decided_by_checks) == (
        0.0, 0.0, 0.0, 0.0
    )
    assert not diag.near_chance
    assert diag.summary() == (
        "the judge was asked on 3 of 3 pairs; it agreed with itself across orders on 3 of 3 "
        "(100%) and preferred the first slot 50% of the time, with a mean margin of 0.63: "
        "its verdicts carry signal."
    )


def test_generated_verdicts_and_other_labels():
    verdicts = [
        judged("second", "first", labels=("original", "revision")),
        judged("first", "second", labels=("original", "revision")),
    ]
    diag = diagnose(verdicts)
    assert diag.position_consistency == 1.0
    assert diag.mean_margin == 1.0
    assert not diag.near_chance


def test_flipped_verdicts_are_inconsistent_ties():
    verdicts = [first_slot_always(0.9), judged("second", "second", 0.3, 0.3), b_consistently()]
    assert [v.decided_by for v in verdicts] == ["flip", "flip", "judge"]
    diag = diagnose(verdicts)
    assert diag.consistent == 1 and diag.decisive == 3
    assert diag.position_consistency == pytest.approx(1 / 3)
    assert diag.flip_rate == pytest.approx(2 / 3)
    assert diag.tie_rate == pytest.approx(2 / 3)
    # choices: first, first, second, second, second, first
    assert diag.first_slot_rate == 0.5
    # p_b: 0.5, 0.5, 0.9 -> margins 0, 0, 0.8
    assert diag.mean_margin == pytest.approx(0.8 / 3)
    assert diag.near_chance  # by consistency alone


def test_consistency_at_the_threshold_is_not_near_chance():
    flips = [first_slot_always(0.6), judged("second", "second", 0.4, 0.4)]
    diag = diagnose([b_consistently()] * 3 + flips)
    assert diag.position_consistency == pytest.approx(0.6)
    assert diag.first_slot_rate == 0.5
    assert diag.mean_margin == pytest.approx(0.8 * 3 / 5)
    assert not diag.near_chance
    one_more_flip = diagnose([b_consistently()] * 3 + flips + [first_slot_always()])
    assert one_more_flip.position_consistency == 0.5
    assert one_more_flip.near_chance


def test_all_checks_decided():
    verdicts = [checks_verdict(a_passes=True, b_passes=False),
                checks_verdict(a_passes=False, b_passes=True)] * 2
    diag = diagnose(verdicts)
    assert diag.n == 4
    assert diag.decided_by_checks == 1.0
    assert diag.judged == 0
    assert diag.position_consistency is None
    assert diag.first_slot_rate is None
    assert diag.mean_margin is None
    assert not diag.near_chance  # nothing was judged, so nothing says the judge is bad
    assert diag.summary() == (
        "the judge was asked on none of the 4 pairs (the checks decided 100%), "
        "so nothing is known about its reliability."
    )


def test_checks_decided_but_judge_asked_anyway_counts_as_judged():
    # judge_when_checks_decide: the checks decide, the judge's two orders are still recorded.
    asked = judged("first", "first", 0.9, 0.9, a_passes=False, b_passes=True)
    assert asked.decided_by == "checks" and asked.winner == "b"
    diag = diagnose([asked, checks_verdict(a_passes=True, b_passes=False)])
    assert diag.decided_by_checks == 1.0
    assert diag.judged == 1
    assert diag.position_consistency == 0.0
    assert diag.first_slot_rate == 1.0
    assert diag.flip_rate == 0.0  # the checks decided, so no tie was recorded
    assert diag.near_chance


def test_all_abstained():
    verdicts = [judged("abstain", "abstain")] * 2 + [judged("first", "abstain")]
    assert all(v.winner == "abstain" and v.p_b is None for v in verdicts)
    diag = diagnose(verdicts)
    assert diag.abstain_rate == 1.0
    assert diag.judged == 3
    assert diag.decisive == 0
    assert diag.position_consistency is None
    assert diag.first_slot_rate == 1.0  # the one order that chose picked the first slot
    assert diag.mean_margin is None
    assert diag.near_chance
    assert diag.summary() == (
        "the judge was asked on 3 of 3 pairs but abstained in at least one order on every one: "
        "near chance, its verdicts carry little signal."
    )


def test_abstentions_are_left_out_of_consistency_and_reported():
    verdicts = [b_consistently(), b_consistently(), judged("abstain", "first")]
    diag = diagnose(verdicts)
    assert diag.judged == 3 and diag.decisive == 2
    assert diag.position_consistency == 1.0
    assert diag.abstain_rate == pytest.approx(1 / 3)
    assert diag.first_slot_rate == pytest.approx(3 / 5)
    assert diag.summary() == (
        "the judge was asked on 3 of 3 pairs; it agreed with itself across orders on 2 of 2 "
        "(100%) and preferred the first slot 60% of the time, with a mean margin of 0.80, "
        "abstaining in one order or both on 1: its verdicts carry signal."
    )


def test_strongly_position_biased_judge():
    # 20 pairs the checks decided, 12 the judge saw: 3 consistent, 9 first slot both times.
    verdicts = (
        [checks_verdict(a_passes=True, b_passes=False)] * 20
        + [b_consistently(0.9)] * 3
        + [first_slot_always(0.9)] * 9
    )
    diag = diagnose(verdicts)
    assert diag.n == 32
    assert diag.decided_by_checks == pytest.approx(20 / 32)
    assert diag.judged == 12
    assert diag.position_consistency == pytest.approx(0.25)
    assert diag.first_slot_rate == pytest.approx(21 / 24)
    assert diag.flip_rate == pytest.approx(9 / 32)
    assert diag.mean_margin == pytest.approx(0.8 * 3 / 12)
    assert diag.near_chance
    assert diag.summary() == (
        "the judge was asked on 12 of 32 pairs; it agreed with itself across orders on 3 of 12 "
        "(25%) and preferred the first slot 88% of the time, with a mean margin of 0.20: "
        "near chance, its verdicts carry little signal."
    )


def test_soft_labels_near_one_half_are_near_chance_even_when_consistent():
    verdicts = [judged("second", "first", 0.48, 0.53), judged("first", "second", 0.54, 0.47)]
    diag = diagnose(verdicts)
    assert diag.position_consistency == 1.0
    assert diag.first_slot_rate == 0.5
    # p_b: (0.52 + 0.53) / 2 = 0.525 and (0.46 + 0.47) / 2 = 0.465 -> margins 0.05 and 0.07
    assert diag.mean_margin == pytest.approx(0.06)
    assert diag.near_chance


def test_first_slot_bias_alone_is_near_chance():
    # Consistent whenever it chose in both orders, but when one order abstains the other one
    # always picks the first slot: 3 + 10 first-slot choices out of 16.
    verdicts = [b_consistently()] * 3 + [judged("first", "abstain")] * 10
    diag = diagnose(verdicts)
    assert diag.position_consistency == 1.0
    assert diag.mean_margin == pytest.approx(0.8)
    assert diag.first_slot_rate == pytest.approx(13 / 16)
    assert diag.first_slot_rate > MAX_FIRST_SLOT_RATE
    assert diag.near_chance
    mirrored = [b_consistently()] * 3 + [judged("abstain", "second")] * 10
    assert diagnose(mirrored).first_slot_rate == pytest.approx(3 / 16)
    assert diagnose(mirrored).near_chance


def test_diagnostics_serialise():
    diag = diagnose([b_consistently(), first_slot_always()])
    assert JudgeDiagnostics.model_validate_json(diag.model_dump_json()) == diag
