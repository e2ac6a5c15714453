"""Harvest strategies on scripted critique results: what is kept, what is dropped and why."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from selfimprove.config import HarvestConfig
from selfimprove.harvest import bare_answer, harvest
from selfimprove.store import PAIR_COLUMNS, SFT_COLUMNS, PreferenceStore, content_hash
from selfimprove.types import (
    CheckResult,
    Critique,
    CritiqueResult,
    OrderJudgment,
    RoundRecord,
    Verdict,
)

FIRST = "Well, honestly, there are many many things one could say about the sky being blue."
FINAL = "Sunlight scatters off air molecules; blue light scatters most."
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def check(passed: bool, hard: bool = True, check_id: str = "max_words") -> CheckResult:
    return CheckResult(check_id=check_id, kind="max_words", passed=passed, hard=hard)


def verdict(winner: str, p_b: float | None, *, a_pass: bool = True, b_pass: bool = True,
            decided_by: str = "judge") -> Verdict:
    """A position-swapped verdict: order 1 shows a first, order 2 shows b first."""
    orders = []
    if p_b is not None:
        orders = [
            OrderJudgment(first="a", p_first=round(1 - (p_b - 0.05), 6), choice="second",
                          method="logprob"),
            OrderJudgment(first="b", p_first=round(p_b + 0.05, 6), choice="first",
                          method="logprob"),
        ]
    return Verdict(winner=winner, p_b=p_b, decided_by=decided_by, orders=orders,
                   a_passes_checks=a_pass, b_passes_checks=b_pass)


def result(
    *,
    prompt_id: str = "p1",
    first: str = FIRST,
    final: str = FINAL,
    v: Verdict | None = None,
    first_checks: list[CheckResult] | None = None,
    final_checks: list[CheckResult] | None = None,
    revised: bool = True,
    truncated: bool = False,
    **extra,
) -> CritiqueResult:
    first_checks = first_checks if first_checks is not None else [check(True)]
    final_checks = final_checks if final_checks is not None else [check(True)]
    rounds = [
        RoundRecord(
            round=0,
            response=first,
            checks=first_checks,
            critique=Critique(round=0, principle_ids=["concise", "honest"],
                              text="Too wordy; get to the point."),
            revision=final if revised else None,
            revision_truncated=truncated,
        ),
        RoundRecord(round=1, response=final, checks=final_checks),
    ]
    return CritiqueResult(
        prompt_id=prompt_id,
        prompt=f"Why is the sky blue? ({prompt_id})",
        constitution="concise",
        constitution_hash="abc123",
        policy_version="v3",
        first_response=first,
        final_response=final,
        rounds=rounds,
        final_checks=final_checks,
        verdict=v if v is not None else verdict("b", 0.9),
        **extra,
    )


def run(results, **cfg):
    return harvest(results, HarvestConfig(**cfg), cycle=2, now=NOW)


def text(messages: list[dict]) -> str:
    assert len(messages) == 1
    return messages[0]["content"]


def test_revision_preferred_gives_pair_with_provenance():
    out = run([result()])
    assert out.kept == {"revision": 1, "sft": 1}
    assert out.dropped == {}
    (row,) = out.pairs
    assert set(row) == set(PAIR_COLUMNS)
    assert row["prompt"] == [{"role": "user", "content": "Why is the sky blue? (p1)"}]
    assert text(row["chosen"]) == FINAL and text(row["rejected"]) == FIRST
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    assert row["strategy"] == "revision" and row["decided_by"] == "judge"
    assert row["margin"] == pytest.approx(0.8)
    assert row["p_b_order1"] == pytest.approx(0.85)
    assert row["p_b_order2"] == pytest.approx(0.95)
    assert row["principle_ids"] == ["concise", "honest"]
    assert row["critiques"] == ["Too wordy; get to the point."]
    assert (row["constitution"], row["constitution_hash"]) == ("concise", "abc123")
    assert (row["policy_version"], row["cycle"], row["prompt_id"]) == ("v3", 2, "p1")
    assert row["created_at"] == NOW.isoformat()
    assert row["content_hash"] == content_hash(row)
    checks = json.loads(row["check_results"])
    assert checks["chosen"]["passes"] and checks["rejected"]["passes"]
    assert checks["chosen"]["checks"][0]["check_id"] == "max_words"


def test_original_preferred_gives_reverse_pair():
    out = run([result(v=verdict("a", 0.2))])
    (row,) = out.pairs
    assert text(row["chosen"]) == FIRST and text(row["rejected"]) == FINAL
    assert row["margin"] == pytest.approx(0.6)


@pytest.mark.parametrize("winner", ["tie", "abstain"])
def test_tie_and_abstain_are_dropped_and_counted(winner):
    p_b = 0.5 if winner == "tie" else None
    out = run([result(v=verdict(winner, p_b, decided_by="flip" if winner == "tie" else "abstain")),
               result(prompt_id="p2")])
    assert out.dropped == {winner: 1}
    assert [r["prompt_id"] for r in out.pairs] == ["p2"]


def test_min_margin():
    results = [result(prompt_id="weak", v=verdict("b", 0.6)), result(prompt_id="strong")]
    out = run(results, min_margin=0.5)
    assert [r["prompt_id"] for r in out.pairs] == ["strong"]
    assert out.dropped == {"below_margin": 1}
    assert len(run(results, min_margin=0.1).pairs) == 2


def test_length_guard_on_chosen_side():
    long_final = " ".join(f"word{i}" for i in range(45))  # 45 words vs 15 rejected: ratio 3
    r = result(final=long_final)
    out = run([r], max_length_ratio=2.0)
    assert out.pairs == [] and out.dropped == {"length_guard": 1}
    assert len(run([r], max_length_ratio=4.0).pairs) == 1
    # A shorter chosen side is never stopped by the guard.
    assert len(run([result()], max_length_ratio=1.0).pairs) == 1


def test_shorter_chosen_guard_keeps_the_sft_row():
    # FINAL has 8 words against FIRST's 15: a ratio of 0.53
    out = run([result()], min_length_ratio=0.8)
    assert out.pairs == [] and out.dropped == {"shorter_chosen": 1}
    assert len(out.sft) == 1  # the revision is still a fine SFT example
    assert len(run([result()], min_length_ratio=0.5).pairs) == 1


def test_identical_and_no_revision():
    same = result(final=FIRST.replace(" ", "  ") + "\n")
    unrevised = result(final=FIRST, revised=False)
    out = run([same, unrevised])
    assert out.pairs == []
    assert out.dropped == {"identical": 1, "no_revision": 1}


def test_checks_dominate_judge_preference():
    # The judge prefers the original, but it fails a hard check that the revision passes;
    # the verdict's own flags missed it: harvest reads the recorded check results too.
    r = result(v=verdict("a", 0.1), first_checks=[check(False)])
    (row,) = run([r], min_margin=0.9).pairs
    assert text(row["chosen"]) == FINAL
    assert row["decided_by"] == "checks" and row["margin"] == 1.0
    assert json.loads(row["check_results"])["rejected"]["passes"] is False
    # The reverse: the revision fails a hard check, so the original is chosen.
    r2 = result(v=verdict("b", 0.95, b_pass=False))
    (row2,) = run([r2]).pairs
    assert text(row2["chosen"]) == FIRST and row2["decided_by"] == "checks"


def test_soft_check_failures_do_not_dominate():
    r = result(v=verdict("a", 0.2), first_checks=[check(False, hard=False)])
    (row,) = run([r]).pairs
    assert text(row["chosen"]) == FIRST and row["decided_by"] == "judge"


def test_failing_response_is_never_chosen():
    r = result(first_checks=[check(False)], final_checks=[check(False)])
    out = run([r])
    assert out.pairs == []
    assert out.dropped == {"chosen_fails_checks": 1, "checks_failed_sft": 1}


def test_no_verdict_drops_unless_checks_decide():
    judged_only = result().model_copy(update={"verdict": None})
    check_decided = result(prompt_id="p2", first_checks=[check(False)])
    check_decided = check_decided.model_copy(update={"verdict": None})
    out = run([judged_only, check_decided])
    assert out.dropped == {"no_verdict": 1}
    (row,) = out.pairs
    assert row["prompt_id"] == "p2" and row["decided_by"] == "checks"
    assert row["p_b_order1"] is None and row["p_b_order2"] is None


def best_of_n(scores, passed, **kw) -> CritiqueResult:
    samples = [f"sample number {i}" for i in range(len(scores))]
    return result(samples=samples, sample_scores=scores, sample_checks_passed=passed, **kw)


def test_best_of_n_orders_by_checks_then_score():
    r = best_of_n([3.0, None, 5.0, 1.0, 4.0], [True, True, False, True, True])
    out = run([r], strategies=["best_of_n"])
    (row,) = out.pairs
    # Sample 2 scored highest but fails a hard check: it is the rejected one.
    assert text(row["chosen"]) == "sample number 4"
    assert text(row["rejected"]) == "sample number 2"
    assert row["decided_by"] == "checks" and row["margin"] == 1.0
    assert row["strategy"] == "best_of_n"
    assert row["p_b_order1"] is None and row["principle_ids"] == []
    assert out.kept == {"best_of_n": 1, "sft": 1}


def test_best_of_n_by_score_and_margin():
    r = best_of_n([3.0, None, 5.0, 1.0], [True] * 4)
    (row,) = run([r], strategies=["best_of_n"]).pairs
    assert (text(row["chosen"]), text(row["rejected"])) == ("sample number 2", "sample number 3")
    assert row["decided_by"] == "score"
    assert row["margin"] == pytest.approx(0.8)  # (5 - 1) / score_scale 5
    assert run([r], strategies=["best_of_n"], min_margin=0.9).dropped == {"below_margin": 1}
    assert len(run([r], strategies=["best_of_n"], score_scale=4.0, min_margin=0.9).pairs) == 1


def test_best_of_n_drops():
    results = [
        result(prompt_id="none"),
        best_of_n([None, 2.0, None], [True] * 3, prompt_id="one_scored"),
        best_of_n([2.0, 2.0, 2.0], [True] * 3, prompt_id="equal"),
        best_of_n([2.0, 4.0], [False, False], prompt_id="all_fail"),
    ]
    out = run(results, strategies=["best_of_n"], sft_requires_checks=False)
    assert out.pairs == []
    assert out.dropped == {
        "no_samples": 1, "too_few_scored": 1, "all_equal": 1, "chosen_fails_checks": 1
    }


def test_best_of_n_without_scores_ranks_by_checks_alone():
    # The pointwise judge was off (score_samples: false): rejection sampling on the checks.
    r = best_of_n([None] * 4, [False, True, False, True])
    out = run([r], strategies=["best_of_n"])
    (row,) = out.pairs
    assert text(row["chosen"]) == "sample number 3"  # the last passing one after a stable sort
    assert text(row["rejected"]) == "sample number 0"
    assert row["decided_by"] == "checks" and row["margin"] == 1.0
    all_pass = run([best_of_n([None] * 3, [True] * 3)], strategies=["best_of_n"])
    assert all_pass.pairs == [] and all_pass.dropped == {"all_equal": 1}
    lone = run([best_of_n([None], [True])], strategies=["best_of_n"])
    assert lone.dropped == {"too_few_samples": 1}


def test_sft_falls_back_to_the_best_passing_sample():
    # The revision ran out of budget: no clean SFT example, but a passing sample is one.
    samples = ["Sample one, which fails.", "Sample two passes.", "Sample three passes too."]
    r = result(truncated=True, samples=samples, sample_scores=[None] * 3,
               sample_checks_passed=[False, True, True])
    out = run([r], strategies=["revision", "best_of_n"])
    assert out.dropped == {"truncated_revision": 1, "truncated_sft": 1}
    assert out.kept == {"best_of_n": 1, "sft": 1, "sft_best_sample": 1}
    (sft,) = out.sft
    assert set(sft) == set(SFT_COLUMNS)
    assert sft["strategy"] == "best_sample"
    assert sft["messages"][1]["content"] == "Sample two passes."  # sample order breaks the tie
    assert sft["principle_ids"] == [] and sft["critiques"] == []
    # A scored sample set prefers the highest score among the passing ones.
    scored = r.model_copy(update={"sample_scores": [5.0, 1.0, 3.0]})
    (sft,) = run([scored], strategies=["revision", "best_of_n"]).sft
    assert sft["messages"][1]["content"] == "Sample three passes too."
    # Without best_of_n harvesting, or without a passing sample, there is no fallback.
    assert run([r]).sft == []
    failing = r.model_copy(update={"sample_checks_passed": [False] * 3})
    assert run([failing], strategies=["revision", "best_of_n"]).sft == []


def test_both_strategies_count_separately():
    r = best_of_n([1.0, 4.0], [True, True])
    out = run([r, result(prompt_id="p2")], strategies=["revision", "best_of_n"])
    assert out.kept == {"revision": 2, "best_of_n": 1, "sft": 2}
    assert out.dropped == {"no_samples": 1}
    assert len({row["content_hash"] for row in out.pairs}) == 3


def test_sft_rows_only_when_final_passes():
    ok = result(prompt_id="ok")
    bad = result(prompt_id="bad", final_checks=[check(False)], first_checks=[check(False)])
    soft = result(prompt_id="soft", final_checks=[check(False, hard=False)])
    out = run([ok, bad, soft])
    assert [r["prompt_id"] for r in out.sft] == ["ok", "soft"]
    assert out.dropped["checks_failed_sft"] == 1
    row = out.sft[0]
    assert set(row) == set(SFT_COLUMNS)
    assert row["messages"] == [
        {"role": "user", "content": "Why is the sky blue? (ok)"},
        {"role": "assistant", "content": FINAL},
    ]
    assert row["content_hash"] == content_hash(row)
    relaxed = run([bad], sft_requires_checks=False)
    assert [r["prompt_id"] for r in relaxed.sft] == ["bad"]


def test_truncated_revision_is_neither_a_pair_nor_an_sft_row():
    """A revision that ran out of its token budget would teach stopping mid-answer."""
    cut = result(prompt_id="cut", truncated=True)
    assert cut.final_truncated
    out = run([cut, result(prompt_id="ok")])
    assert [r["prompt_id"] for r in out.pairs] == ["ok"]
    assert [r["prompt_id"] for r in out.sft] == ["ok"]
    assert out.dropped == {"truncated_revision": 1, "truncated_sft": 1}
    assert out.kept == {"revision": 1, "sft": 1}
    # even when the checks would decide for it, and however lax the SFT rule
    decided = result(prompt_id="cut2", truncated=True, first_checks=[check(False)])
    out = run([decided, cut], sft_requires_checks=False)
    assert out.pairs == [] and out.sft == []
    assert out.dropped == {"truncated_revision": 2, "truncated_sft": 2}


def test_only_the_last_revision_counts_as_the_final_one():
    """An earlier revision cut short, revised again in full, is a clean example."""
    r = result(truncated=True)
    rounds = [*r.rounds[:1], RoundRecord(round=1, response=FINAL, checks=[check(True)],
                                         revision=FINAL + " Indeed."),
              RoundRecord(round=2, response=FINAL + " Indeed.", checks=[check(True)])]
    clean = r.model_copy(update={"rounds": rounds, "final_response": FINAL + " Indeed."})
    assert not clean.final_truncated
    out = run([clean])
    assert out.dropped == {} and len(out.pairs) == 1 and len(out.sft) == 1
    cut = clean.model_copy(update={"rounds": [
        *rounds[:1], rounds[1].model_copy(update={"revision_truncated": True}), rounds[2]]})
    assert cut.final_truncated
    assert run([cut]).dropped == {"truncated_revision": 1, "truncated_sft": 1}


def test_truncated_revision_leaves_best_of_n_pairs_alone(tmp_path):
    r = best_of_n([1.0, 4.0], [True, True], truncated=True)
    out = run([r], strategies=["revision", "best_of_n"])
    assert [p["strategy"] for p in out.pairs] == ["best_of_n"]  # the samples were not cut
    assert out.dropped == {"truncated_revision": 1, "truncated_sft": 1}
    store = PreferenceStore(tmp_path, heldout_fraction=0.0)
    store.append(out.pairs, out.sft, "cycle2-batch0", dropped=out.dropped)
    assert store.stats()["dropped"] == {"truncated_revision": 1, "truncated_sft": 1}


def test_config_forbids_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError):
        HarvestConfig(strategy=["revision"])
    with pytest.raises(ValidationError):
        HarvestConfig(strategies=["best_of_three"])
    with pytest.raises(ValidationError):
        HarvestConfig(min_margin=1.5)


def test_harvested_rows_fit_the_store_schema(tmp_path):
    results = [result(prompt_id=f"p{i}") for i in range(3)]
    results.append(best_of_n([1.0, None, 3.0], [True, True, True], prompt_id="bon"))
    out = run(results, strategies=["revision", "best_of_n"])
    store = PreferenceStore(tmp_path, heldout_fraction=0.0)
    res = store.append(out.pairs, out.sft, "cycle2-batch0", dropped=out.dropped)
    assert res.pairs_written == 5 and res.sft_written == 4
    pairs = store.pairs_dataset()
    assert pairs.column_names == PAIR_COLUMNS
    assert sorted(pairs["content_hash"]) == sorted(r["content_hash"] for r in out.pairs)
    assert pairs[0]["prompt"][0] == {"role": "user", "content": "Why is the sky blue? (p0)"}
    assert store.stats()["dropped"] == {"no_samples": 3}


def test_a_chosen_side_that_repeats_itself_is_never_kept():
    """Degenerate text passes length checks; teaching it made the policy loop (main job)."""
    from selfimprove.types import CheckResult, CritiqueResult, RoundRecord, Verdict

    looping = "Practice every day to learn. " * 4
    ok = [CheckResult(check_id="max_80_words", kind="max_words", passed=True)]
    bad = [CheckResult(check_id="max_80_words", kind="max_words", passed=False)]
    result = CritiqueResult(
        prompt_id="p1", prompt="How do I learn Python?", constitution="c", constitution_hash="h",
        first_response="long " * 90, final_response=looping,
        rounds=[RoundRecord(round=0, response="long " * 90, checks=bad, revision=looping)],
        final_checks=ok,
        verdict=Verdict(winner="b", decided_by="checks", a_passes_checks=False),
    )
    out = harvest([result], HarvestConfig())
    assert out.pairs == [] and out.sft == []
    assert out.dropped == {"chosen_repeats_itself": 1, "repetitive_sft": 1}


@pytest.mark.parametrize(("reviser", "strategy"), [
    ("repair", "repaired_revision"), ("sample", "sample_revision"), ("model", "revision")])
def test_rows_say_who_revised(reviser, strategy):
    # The first response failed a check, the revision passes: the checks decide the pair.
    r = result(first_checks=[check(False)])
    r.rounds[0] = r.rounds[0].model_copy(update={"reviser": reviser})
    out = run([r])
    (pair,) = out.pairs
    (sft,) = out.sft
    assert pair["strategy"] == strategy and pair["decided_by"] == "checks"
    assert sft["strategy"] == ("final_revision" if reviser == "model" else strategy)
    want = {strategy: 1, "sft": 1}
    if reviser != "model":
        want[f"sft_{strategy}"] = 1
    assert out.kept == want


def test_an_answer_of_only_the_required_words_is_no_row():
    """ "The end." passes "end with 'The end.'" and answers nothing: neither chosen nor SFT."""
    closing = [{"kind": "ends_with", "value": "The end."}]
    empty = result(final="The end.", first_checks=[check(False)], prompt_checks=closing,
                   samples=["the END", "Tides follow the moon. The end.", "Tides."],
                   sample_checks_passed=[True, True, False])
    out = run([empty], strategies=["revision", "best_of_n"])
    assert [p["strategy"] for p in out.pairs] == ["best_of_n"]
    assert out.dropped["chosen_says_nothing"] == 1 and out.dropped["says_nothing_sft"] == 1
    # the fallback SFT row is the sample with content, never the bare closing words
    (row,) = out.sft
    assert text(row["messages"][-1:]) == "Tides follow the moon. The end."
    # the same words with content around them are a row
    kept = run([result(final="Sunlight scatters blue light. The end.", prompt_checks=closing)])
    assert len(kept.sft) == 1 and "says_nothing_sft" not in kept.dropped


def test_bare_negatives_pair_a_kept_answer_against_only_the_asked_words():
    """Once a prompt, beside its kept pairs: the chosen answer against the asked words alone."""
    asks = [{"kind": "starts_with", "value": "First"},
            {"kind": "include_words", "id": "w", "words": ["river", "blue"]},
            {"kind": "ends_with", "value": "The end."}]
    answer = "First, the river runs blue under the sky all day long. The end."
    asked = result(final=answer, prompt_checks=asks,
                   samples=[answer, "Rivers."], sample_checks_passed=[True, False])
    plain = result(prompt_id="p2")  # asks for no words: no bare pair
    out = run([asked, plain], strategies=["revision", "best_of_n"], bare_negatives=True)
    assert [p["strategy"] for p in out.pairs] == [
        "revision", "bare_phrases", "best_of_n", "revision"]
    bare = out.pairs[1]
    assert text(bare["rejected"]) == "First river blue The end."
    assert text(bare["chosen"]) == answer and bare["decided_by"] == "says_nothing"
    assert json.loads(bare["check_results"])["rejected"]["passes"] is False
    assert out.kept["bare_phrases"] == 1
    # off by default
    assert "bare_phrases" not in run([asked], strategies=["revision"]).kept


def test_bare_answer_of_checks():
    assert bare_answer(None) is None and bare_answer([{"kind": "lowercase"}]) is None
    assert bare_answer([{"kind": "ends_with", "value": "stay safe."}]) == "stay safe."
