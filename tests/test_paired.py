"""Prompt-by-prompt comparison of two versions: gained, lost and the exact McNemar test."""

from __future__ import annotations

import pytest

from selfimprove.evaluation import PolicyEval
from selfimprove.paired import mcnemar_exact, paired_passes


def evaluated(version: str, passes: list[bool], prompts: list[str] | None = None) -> PolicyEval:
    prompts = prompts or [f"p{i}" for i in range(len(passes))]
    return PolicyEval(version=version, violation_rate=1 - sum(passes) / len(passes),
                      mean_words=10.0, n_prompts=len(passes), prompts=prompts,
                      passes_checks=passes)


@pytest.mark.parametrize(("gained", "lost", "p"), [
    (0, 0, 1.0),
    (5, 0, 2 / 32),               # all five differing prompts one way
    (0, 5, 2 / 32),               # two-sided: the same the other way
    (9, 3, 2 * 299 / 4096),       # 2 * (C(12,0..3)) / 2^12
    (3, 3, 1.0),                  # an even split is capped at 1
    (1, 0, 1.0),
])
def test_mcnemar_exact_matches_the_binomial_tail(gained, lost, p):
    assert mcnemar_exact(gained, lost) == pytest.approx(p)


def test_mcnemar_refuses_negative_counts():
    with pytest.raises(ValueError, match="must not be negative"):
        mcnemar_exact(-1, 2)


def test_gained_and_lost_are_counted_prompt_by_prompt():
    v0 = evaluated("v0", [True, True, False, False, False, True])
    v2 = evaluated("v2", [True, False, True, True, True, True])
    paired = paired_passes(v0, v2)
    assert (paired.base_passes, paired.other_passes, paired.gained, paired.lost) == (3, 5, 3, 1)
    assert paired.p_value == pytest.approx(2 * (1 + 4) / 16)
    assert paired.summary() == "v2 5 vs v0 3 of 6 (gained 3, lost 1; McNemar p = 0.62)"


def test_versions_evaluated_on_other_prompts_are_not_compared():
    with pytest.raises(ValueError, match="not evaluated on the same prompts"):
        paired_passes(evaluated("v0", [True, False]), evaluated("v1", [True, False], ["a", "b"]))
