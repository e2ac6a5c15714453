"""The gate: pure helpers, policy evaluation and gate logic on a scripted backend (each call
answered by the version it is bound to), the degeneration guards, and a real gate run."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.backends.served import serve
from selfimprove.config import GateConfig, RunConfig, load_config
from selfimprove.constitution import load_constitution
from selfimprove.degeneration import DegenerationStats
from selfimprove.errors import ConfigError
from selfimprove.evaluation import (
    PolicyEval,
    check_pass_rates,
    evaluate_policy,
    kind_counts,
    kind_pass_rates,
    retention_texts,
)
from selfimprove.gate import (
    GateResult,
    VerdictCounts,
    count_verdicts,
    degeneration_reasons,
    gate,
    kind_drop_reasons,
    thresholds_passed,
    wilson_interval,
    win_rate,
)
from selfimprove.judges.pairwise import PairwiseJudge
from selfimprove.types import Message, PolicyRef, SamplingParams, Verdict

CONSTITUTION = """
name: gate-test
version: 1
principles:
  - id: polite
    critique: Is it polite?
    revision: Make it polite.
checks:
  - id: no_rude
    kind: forbid_phrases
    phrases: [rude]
judge:
  pairwise: Pick the better response.
  pointwise:
    - points: 1
      criterion: It is polite.
"""

PROMPTS = ["q1", "q2", "q3", "q4"]
V0 = PolicyRef(version="v0")
V1 = PolicyRef(version="v1", adapter_path="policies/v1/adapter")
V2 = PolicyRef(version="v2", adapter_path="policies/v2/adapter")


@pytest.fixture
def constitution(tmp_path: Path):
    path = tmp_path / "gate-test.yaml"
    path.write_text(CONSTITUTION)
    return load_constitution(path)


class GateBackend(ScriptedBackend):
    """Answers depend on the served version; the judge prefers responses containing ``prefer``.

    An answer is a template (``{prompt}`` filled in) or a mapping from prompt to template.
    Every generate call records the version served while generating, every judge call the
    version served while judging; versions in ``truncated`` hit the token cap.
    """

    def __init__(
        self, answers: dict[str, Any], prefer: str | None = "better", truncated: Sequence[str] = ()
    ) -> None:
        super().__init__(self._respond, self._score)
        self.answers = answers
        self.prefer = prefer
        self.truncated = set(truncated)
        self.judged_with: list[str] = []
        self.generated_with: list[tuple[str, int]] = []

    async def generate(self, conversations, params: SamplingParams):
        self.generated_with.append((self.policy.version, len(conversations)))
        outs = await super().generate(conversations, params)
        if self.policy.version in self.truncated:
            outs = [[c.model_copy(update={"finish_reason": "length"}) for c in cs] for cs in outs]
        return outs

    def _respond(self, conv, params: SamplingParams) -> str:
        prompt = conv[-1].content
        answer = self.answers[self.policy.version]
        if isinstance(answer, dict):
            answer = answer[prompt]
        return answer.format(prompt=prompt)

    def _score(self, conv, options) -> dict[str, float]:
        self.judged_with.append(self.policy.version)
        text = conv[-1].content
        first = text.split("Response A:")[1].split("Response B:")[0]
        if self.prefer is None:  # a position-biased judge: always "A", so every verdict flips
            return {"A": -0.1, "B": -3.0}
        first_wins = self.prefer in first
        return {"A": -0.1 if first_wins else -3.0, "B": -3.0 if first_wins else -0.1}


class NllGateBackend(GateBackend):
    """A :class:`GateBackend` that also measures retention, per served version."""

    def __init__(self, answers, nll: dict[str, float], prefer: str | None = "better") -> None:
        super().__init__(answers, prefer)
        self.nll = nll

    async def sequence_nll(self, texts, max_length: int = 256) -> list[float]:
        self.calls.append(("nll", len(texts)))
        return [self.nll[self.policy.version]] * len(texts)


def evals(
    cand_viol=0.0, inc_viol=0.0, cand_words=10.0, inc_words=10.0, cand_nll=2.0, inc_nll=2.0
) -> tuple[PolicyEval, PolicyEval]:
    cand = PolicyEval(version="v1", violation_rate=cand_viol, mean_words=cand_words,
                      retention_nll=cand_nll, n_prompts=10)
    inc = PolicyEval(version="v0", violation_rate=inc_viol, mean_words=inc_words,
                     retention_nll=inc_nll, n_prompts=10)
    return cand, inc


def verdict(winner: str) -> Verdict:
    decided = {"a": "judge", "b": "judge", "tie": "flip", "abstain": "abstain"}[winner]
    return Verdict(winner=winner, decided_by=decided)


# ---- pure helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [  # Newcombe (1998), Statistics in Medicine 17:857-872, table I, Wilson score method
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_published_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_wilson_interval_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(2.5, 5)  # half-ties: symmetric around 0.5
    assert lo == pytest.approx(1 - hi) and lo < 0.5 < hi
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    wide, narrow = wilson_interval(5, 10), wilson_interval(50, 100)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    with pytest.raises(ValueError, match="within"):
        wilson_interval(11, 10)


def test_win_rate_counts_ties_half_and_skips_abstains():
    verdicts = [verdict(w) for w in ["b", "b", "b", "tie", "tie", "a", "abstain", "abstain"]]
    counts = count_verdicts(verdicts)
    assert counts == VerdictCounts(wins=3, ties=2, losses=1, abstains=2)
    assert counts.decisive == 6
    assert win_rate(verdicts) == pytest.approx(4 / 6)
    assert win_rate(verdicts, candidate="a") == pytest.approx(2 / 6)
    assert win_rate([verdict("abstain")] * 3) is None
    assert win_rate([]) is None


def test_thresholds_passes_when_every_threshold_holds():
    cand, inc = evals(cand_words=12.0, inc_words=10.0, cand_nll=2.1)
    assert thresholds_passed(cand, inc, VerdictCounts(wins=5, losses=5), GateConfig()) == (True, [])


def test_thresholds_names_every_failed_threshold():
    cand, inc = evals(cand_viol=0.3, inc_viol=0.2, cand_words=15.0, cand_nll=2.2)
    counts = VerdictCounts(wins=3, ties=1, losses=6)
    passed, reasons = thresholds_passed(cand, inc, counts, GateConfig())
    assert not passed
    assert reasons == [
        "win rate 0.35 < 0.40",
        "violation rate 0.20 -> 0.30 (delta +0.10 > +0.00)",
        "length ratio 1.50 > 1.25 (10.0 -> 15.0 words)",
        "retention NLL increase +10.0% > +5.0% (2.000 -> 2.200)",
    ]


def test_retention_compares_with_the_lower_of_incumbent_and_base():
    """Two promotions of +4% each stay within 5% of their incumbents, not of the base."""
    cand, inc = evals(cand_nll=2.163, inc_nll=2.08)  # +4.0% over the incumbent
    inc = inc.model_copy(update={"version": "v1"})
    base = PolicyEval(version="v0", violation_rate=0.0, mean_words=10.0, retention_nll=2.0,
                      n_prompts=10)
    counts = VerdictCounts(wins=5, losses=5)
    assert thresholds_passed(cand, inc, counts, GateConfig()) == (True, [])
    assert thresholds_passed(cand, inc, counts, GateConfig(), baseline=base) == (False, [
        "retention NLL increase +8.1% > +5.0% against the base v0 (2.000 -> 2.163)",
    ])
    # a base that forgot more than the incumbent does not loosen the guard
    worse = base.model_copy(update={"retention_nll": 2.5})
    assert thresholds_passed(cand, inc, counts, GateConfig(), baseline=worse) == (True, [])


def test_thresholds_skips_thresholds_set_to_none():
    cand, inc = evals(cand_viol=0.9, cand_words=40.0, cand_nll=5.0)
    off = GateConfig(min_win_rate=None, max_violation_rate_delta=None, max_length_ratio=None,
                     max_retention_increase=None)
    assert thresholds_passed(cand, inc, VerdictCounts(losses=10), off) == (True, [])
    assert thresholds_passed(cand, inc, VerdictCounts(losses=10), off.model_copy(
        update={"max_length_ratio": 5.0})) == (True, [])


def test_thresholds_boundaries_and_unknowns():
    cand, inc = evals(cand_viol=0.2, inc_viol=0.2, cand_words=12.5)
    # exactly on the thresholds passes
    assert thresholds_passed(cand, inc, VerdictCounts(wins=2, losses=3), GateConfig()) == (True, [])
    passed, reasons = thresholds_passed(cand, inc, VerdictCounts(abstains=4), GateConfig())
    assert reasons == ["win rate unknown: all 4 judgments abstained"]
    cand, inc = evals(cand_words=3.0, inc_words=0.0, cand_nll=None)
    passed, reasons = thresholds_passed(cand, inc, VerdictCounts(wins=1), GateConfig())
    assert reasons == ["length ratio undefined: incumbent mean 0 words, candidate 3.0"]


def test_thresholds_min_length_ratio_catches_a_candidate_that_goes_quiet():
    cand, inc = evals(cand_words=2.0, inc_words=10.0)
    passed, reasons = thresholds_passed(cand, inc, VerdictCounts(wins=5), GateConfig())
    assert reasons == ["length ratio 0.20 < 0.25 (10.0 -> 2.0 words)"]
    cand, inc = evals(cand_words=2.5, inc_words=10.0)  # exactly on the floor
    assert thresholds_passed(cand, inc, VerdictCounts(wins=5), GateConfig()) == (True, [])
    off = GateConfig(min_length_ratio=None)
    assert thresholds_passed(*evals(cand_words=0.5), VerdictCounts(wins=5), off) == (True, [])


def test_gate_config_is_strict_and_greedy_by_default():
    cfg = GateConfig()
    assert cfg.sampling.temperature == 0 and cfg.sampling.max_new_tokens == 128
    assert cfg.judge_version == "base" and cfg.num_prompts == 32
    with pytest.raises(ValidationError):
        GateConfig(min_winrate=0.5)
    with pytest.raises(ValidationError):
        GateConfig(min_win_rate=1.5)


def test_retention_texts_are_shipped():
    texts = retention_texts()
    assert 20 <= len(texts) <= 40
    assert all(len(t.split()) >= 30 for t in texts)
    assert len(set(texts)) == len(texts)


# ---- the gate on a scripted backend ------------------------------------------------------


async def test_evaluate_policy_one_batch_with_checks(constitution):
    backend = NllGateBackend({"v1": "a rude answer to {prompt}"}, {"v1": 1.5})
    backend._policy = V0
    ev = await evaluate_policy(backend, V1, ["q1", "q2"], constitution, SamplingParams())
    # evaluating serves the policy: one switch, then one batch, retention measured as v1
    assert backend.calls == [("load_policy", 0), ("generate", 2), ("nll", len(retention_texts()))]
    assert backend.generated_with == [("v1", 2)]
    assert ev.version == "v1"
    assert ev.responses == ["a rude answer to q1", "a rude answer to q2"]
    assert ev.violation_rate == 1.0 and ev.passes_checks == [False, False]
    assert ev.mean_words == 5.0 and ev.retention_nll == 1.5 and ev.n_prompts == 2
    assert ev.finish_reasons == ["stop", "stop"]
    assert ev.check_pass_rates == {"no_rude": 0.0}
    assert ev.kind_results == [{"forbid_phrases": False}] * 2
    assert ev.degeneration is not None and ev.degeneration.n == 2
    assert ev.degeneration.truncation_rate == 0.0 and ev.degeneration.mean_words == 5.0
    backend.calls.clear()
    ev = await evaluate_policy(backend, V1, ["q1"], constitution, SamplingParams(), retention=())
    assert ev.retention_nll is None and ("nll", 0) not in backend.calls
    assert backend.calls == [("generate", 1)]  # v1 is still served: no second switch
    await evaluate_policy(backend, V1, ["q1"], constitution, SamplingParams(), retention=["x"])
    assert backend.calls[-1] == ("nll", 1)


def test_check_pass_rates_per_check():
    from selfimprove.types import CheckResult

    def res(cid: str, ok: bool) -> CheckResult:
        return CheckResult(check_id=cid, kind="max_words", passed=ok, hard=True)

    results = [[res("a", True), res("b", False)], [res("a", True), res("b", True)],
               [res("a", False), res("b", False)], [res("a", True), res("b", False)]]
    assert check_pass_rates(results) == {"a": 0.75, "b": 0.25}
    assert list(check_pass_rates(results)) == ["a", "b"]  # in the checks' order
    assert check_pass_rates([]) == {}


async def test_evaluate_policy_records_truncation(constitution):
    backend = GateBackend({"v1": "answer to {prompt}"}, truncated=["v1"])
    ev = await evaluate_policy(backend, V1, PROMPTS, constitution, SamplingParams(), retention=())
    assert ev.finish_reasons == ["length"] * 4
    assert ev.degeneration.truncation_rate == 1.0


async def test_gate_promotes_better_candidate_judged_by_base(constitution):
    answers = {"v1": "plain answer to {prompt}", "v2": "better answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 9.0, "v1": 2.0, "v2": 2.02})
    await backend.load_policy(V1)  # the incumbent is being served, as in a running loop
    backend.calls.clear()
    result = await gate(backend, V2, V1, PROMPTS, constitution, GateConfig(min_mean_words=None))
    assert isinstance(result, GateResult)
    assert result.passed and result.reasons == [] and result.unchecked == []
    assert (result.wins, result.ties, result.losses, result.abstains) == (4, 0, 0, 0)
    assert result.win_rate == 1.0
    assert result.win_rate_ci == pytest.approx(wilson_interval(4, 4))
    assert result.length_ratio == 1.0
    assert result.retention_increase == pytest.approx(0.01)  # v1 and v2 measured, not v0
    assert result.incumbent.version == "v1" and result.candidate.version == "v2"
    assert result.candidate.responses == [f"better answer to {p}" for p in PROMPTS]
    assert result.incumbent.responses == [f"plain answer to {p}" for p in PROMPTS]
    assert result.thresholds == GateConfig(min_mean_words=None).model_dump(mode="json")
    # each batch answered by its own version, in one call; both orders of every prompt
    # judged by the bare base model v0
    assert backend.generated_with == [("v1", 4), ("v2", 4)]
    assert backend.judged_with == ["v0"] * 8
    assert all(v.winner == "b" for v in result.verdicts)
    assert result.judge is not None and result.judge.n == 4
    assert result.judge.position_consistency == 1.0


async def test_a_bound_version_answers_after_the_gate_switched_the_backend(constitution):
    """The gate does not restore what was served: every role names its version instead."""
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    backend = GateBackend(answers)
    policy_role = serve(backend, V1)  # the loop's policy role, bound to the incumbent
    (before,) = await policy_role.generate([[Message(role="user", content="q9")]],
                                           SamplingParams())
    await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(min_mean_words=None))
    assert backend.policy.version == "v0"  # the judge was the last to use the backend
    (after,) = await policy_role.generate([[Message(role="user", content="q9")]],
                                          SamplingParams())
    assert before[0].text == after[0].text == "better answer to q9"
    assert backend.generated_with[-1] == ("v1", 1)


async def test_gate_rejects_worse_candidate(constitution):
    answers = {"v0": "better answer to {prompt}", "v1": "plain answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(min_mean_words=None))
    assert not result.passed
    assert result.reasons == [
        "win rate 0.00 < 0.40",
        "no measured improvement: violations 0.00 -> 0.00 and the judge's win-rate interval "
        "0.00-0.49 is not above 0.5",
    ]
    assert (result.wins, result.losses) == (0, 4)
    low, high = result.win_rate_ci
    assert low == 0.0 and high == pytest.approx(0.4899, abs=1e-4)
    assert backend.generated_with == [("v0", 4), ("v1", 4)]
    assert backend.judged_with == ["v0"] * 8


async def test_gate_rejects_longer_candidate(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt} with padding"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(min_mean_words=None))
    assert result.win_rate == 1.0  # the judge likes it, the length guard does not
    assert result.reasons == ["length ratio 1.50 > 1.25 (4.0 -> 6.0 words)"]
    assert not result.passed


async def test_gate_rejects_forgetting_candidate(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.4})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(min_mean_words=None))
    assert result.reasons == ["retention NLL increase +20.0% > +5.0% (2.000 -> 2.400)"]
    assert result.retention_increase == pytest.approx(0.2)
    assert not result.passed


async def test_gate_rejects_candidate_that_violates_checks(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better rude answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(min_mean_words=None))
    # the judge prefers "better", but a response failing a hard check never wins
    assert all(v.decided_by == "checks" and v.winner == "a" for v in result.verdicts)
    assert backend.judged_with == []  # the checks decided: the judge was not asked
    assert result.reasons == [
        "win rate 0.00 < 0.40",
        "violation rate 0.00 -> 1.00 (delta +1.00 > +0.00)",
        "no measured improvement: violations 0.00 -> 1.00 and no pair was left to the judge",
    ]  # a length ratio of exactly 1.25 (5 words vs 4) is within the guard
    assert result.length_ratio == 1.25
    assert result.candidate.check_pass_rates == {"no_rude": 0.0}
    assert result.incumbent.check_pass_rates == {"no_rude": 1.0}
    assert result.judge.decided_by_checks == 1.0


async def test_gate_counts_flips_as_ties(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "other answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0}, prefer=None)
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(min_mean_words=None))
    assert (result.wins, result.ties, result.losses) == (0, 4, 0)
    assert result.win_rate == 0.5 and result.judge.flip_rate == 1.0
    # Ties are no worse, and no evidence of better: not promoted, unless asked to be.
    assert result.reasons == ["no measured improvement: violations 0.00 -> 0.00 and the "
                              "judge is near chance"]
    lenient = GateConfig(min_mean_words=None, require_improvement=False)
    assert (await gate(backend, V1, V0, PROMPTS, constitution, lenient)).passed


async def test_gate_judge_can_be_the_incumbent(constitution):
    answers = {"v1": "plain answer to {prompt}", "v2": "better answer to {prompt}"}
    backend = GateBackend(answers)
    await backend.load_policy(V2)
    judge = PairwiseJudge(serve(backend, V1), constitution.judge.pairwise)
    cfg = GateConfig(min_mean_words=None)
    result = await gate(backend, V2, V1, PROMPTS, constitution, cfg, judge=judge)
    assert backend.judged_with == ["v1"] * 8
    assert backend.generated_with == [("v1", 4), ("v2", 4)]
    assert result.passed


def test_cycle_picks_the_gate_judge_version_from_the_config(tmp_path):
    """``gate.judge_version`` is read where the cycle builds the gate's judge."""
    from selfimprove.improvement_cycle.gate_candidate import judge_version
    from selfimprove.registry import PolicyRegistry

    registry = PolicyRegistry(tmp_path)
    ctx = SimpleNamespace(registry=registry, cfg=SimpleNamespace(gate=GateConfig()))
    assert judge_version(ctx, V1) == registry.get("v0")
    ctx.cfg.gate = GateConfig(judge_version="incumbent")
    assert judge_version(ctx, V1) == V1


async def test_gate_with_separate_judge_backend_leaves_its_policy_alone(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    policy_backend = GateBackend(answers)
    judge_backend = GateBackend({}, prefer="plain")
    judge = PairwiseJudge(judge_backend, constitution.judge.pairwise)
    result = await gate(policy_backend, V1, V0, PROMPTS, constitution,
                        GateConfig(min_mean_words=None, require_improvement=False),
                        judge=judge)
    assert result.reasons == ["win rate 0.00 < 0.40"]
    assert not any(kind == "logprobs" for kind, _ in policy_backend.calls)
    assert policy_backend.judged_with == []
    assert ("load_policy", 0) not in judge_backend.calls
    assert judge_backend.judged_with == ["v0"] * 8


async def test_gate_reuses_incumbent_eval(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    backend = GateBackend(answers)
    cfg = GateConfig(min_mean_words=None)
    inc = await evaluate_policy(backend, V0, PROMPTS, constitution, cfg.sampling)
    backend.calls.clear()
    backend.generated_with.clear()
    result = await gate(backend, V1, V0, PROMPTS, constitution, cfg, incumbent_eval=inc)
    assert backend.generated_with == [("v1", 4)]  # v1 only
    assert result.incumbent == inc and result.passed
    # no measurement of retention on a backend without sequence_nll: noted, not failed
    assert result.retention_increase is None
    assert result.unchecked == ["retention not measured (the backend has no sequence_nll)"]
    with pytest.raises(ValueError, match="incumbent_eval is for v0, but the incumbent is v1"):
        await gate(backend, V2, V1, PROMPTS, constitution, cfg, incumbent_eval=inc)
    with pytest.raises(ValueError, match="other prompts"):
        await gate(backend, V1, V0, PROMPTS[:2], constitution, cfg, incumbent_eval=inc)


async def test_gate_abstaining_judge_fails_the_win_rate(constitution):
    def respond(conv, params):
        if "Which response is better" in conv[-1].content:
            return "I cannot say."
        return f"answer to {conv[-1].content}"

    backend = ScriptedBackend(respond)  # no log-probabilities: generated verdicts, unparseable
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(min_mean_words=None))
    assert result.abstains == 4 and result.win_rate is None
    assert result.win_rate_ci == (0.0, 1.0)
    assert result.reasons == [
        "win rate unknown: all 4 judgments abstained",
        "no measured improvement: violations 0.00 -> 0.00 and the judge is near chance",
    ]
    assert result.judge.abstain_rate == 1.0


async def test_failed_judging_leaves_the_backend_usable_by_any_version(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    backend = GateBackend(answers)

    def broken(conv, options):
        raise RuntimeError("judge backend down")

    backend.scorer = broken
    with pytest.raises(RuntimeError, match="judge backend down"):
        await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    # the failed judge calls released the backend: the policy's version gets it back at once
    conv = [[Message(role="user", content="q1")]]
    (out,) = await asyncio.wait_for(serve(backend, V1).generate(conv, SamplingParams()), 5)
    assert out[0].text == "better answer to q1"
    (out,) = await asyncio.wait_for(serve(backend, V0).generate(conv, SamplingParams()), 5)
    assert out[0].text == "plain answer to q1"


# ---- degeneration guards -------------------------------------------------------------------

# 11 words, no repetition: clears every guard with the default thresholds.
FINE = "{} answer to {{prompt}} with enough words to pass the floor."
INCUMBENT = FINE.format("plain")
LONGER = "better answer to {prompt} with a few more words to pass the floor."  # 13 words
REPEATS = "better answer to {prompt}, said twice. better answer to {prompt}, said twice."
DEGENERATE = {
    # a candidate that says one sentence twice
    "repetition": (
        {"v1": REPEATS}, (), "max_repetition_increase",
        "repetition rate 1.00 > 0.00 + 0.05 (degeneration guard)",
    ),
    # one of four answers is (near-)empty; the others keep the mean length up
    "near_empty": (
        {"v1": {"q1": "better.", "q2": LONGER, "q3": LONGER, "q4": LONGER}}, (),
        "max_near_empty_increase",
        "near-empty rate 0.25 > 0.00 + 0.02 (degeneration guard)",
    ),
    # the same good answers, but every one hit the token cap
    "truncation": (
        {"v1": FINE.format("better")}, ("v1",), "max_truncation_increase",
        "truncation rate 1.00 > 0.00 + 0.05 (degeneration guard)",
    ),
    # short but not empty: 4 words, within the length ratio (4 / 11 >= 0.25)
    "too_short": (
        {"v1": "better answer to {prompt}."}, (), "min_mean_words",
        "mean length 4.0 words < floor 8",
    ),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
async def test_degeneration_guard_rejects_and_can_be_disabled(constitution, case):
    answers, truncated, field, reason = DEGENERATE[case]
    backend = GateBackend({"v0": INCUMBENT, **answers}, truncated=truncated)
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    assert result.win_rate == 1.0  # the judge likes the candidate; only the guard objects
    assert not result.passed
    assert result.reasons == [reason]
    # set to None, that guard is off and nothing else objects
    off = GateConfig(**{field: None})
    result = await gate(backend, V1, V0, PROMPTS, constitution, off)
    assert result.passed and result.reasons == []
    assert result.thresholds[field] is None


async def test_degeneration_guards_pass_a_fine_candidate(constitution):
    backend = GateBackend({"v0": INCUMBENT, "v1": FINE.format("better")})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    assert result.passed and result.reasons == []
    deg = result.candidate.degeneration
    assert (deg.repetition_rate, deg.near_empty_rate, deg.truncation_rate) == (0.0, 0.0, 0.0)
    assert deg.mean_words == 11.0


async def test_degeneration_rates_compare_with_the_lower_of_incumbent_and_baseline(constitution):
    half = {"q1": REPEATS, "q2": REPEATS, "q3": FINE.format("better"), "q4": LONGER}
    plain_half = {k: v.replace("better", "plain") for k, v in half.items()}
    backend = GateBackend({"v0": INCUMBENT, "v1": plain_half, "v2": half})
    cfg = GateConfig()
    baseline = await evaluate_policy(backend, V0, PROMPTS, constitution, cfg.sampling)
    assert baseline.degeneration.repetition_rate == 0.0
    # against the incumbent alone, repeating as often as it does is no rise
    alone = await gate(backend, V2, V1, PROMPTS, constitution, cfg)
    assert alone.incumbent.degeneration.repetition_rate == 0.5
    assert alone.passed, alone.reasons
    # the base (v0) never repeated: repetition may not creep up cycle after cycle
    with_base = await gate(backend, V2, V1, PROMPTS, constitution, cfg, baseline_eval=baseline)
    assert with_base.reasons == ["repetition rate 0.50 > 0.00 + 0.05 (degeneration guard)"]
    # a worse base does not loosen the guard: the incumbent's lower rate counts
    backend.answers = {"v0": REPEATS, "v1": INCUMBENT, "v2": {**half, "q2": LONGER}}
    worse_base = await evaluate_policy(backend, V0, PROMPTS, constitution, cfg.sampling)
    assert worse_base.degeneration.repetition_rate == 1.0
    result = await gate(backend, V2, V1, PROMPTS, constitution, cfg, baseline_eval=worse_base)
    assert result.reasons == ["repetition rate 0.25 > 0.00 + 0.05 (degeneration guard)"]


def stats(rep=0.0, trunc: float | None = 0.0, empty=0.0, words=12.0, n=10) -> DegenerationStats:
    return DegenerationStats(n=n, repetition_rate=rep, truncation_rate=trunc,
                             near_empty_rate=empty, mean_words=words, median_words=words)


def with_stats(version: str, deg: DegenerationStats | None) -> PolicyEval:
    return PolicyEval(version=version, violation_rate=0.0, mean_words=12.0, n_prompts=10,
                      degeneration=deg)


def test_degeneration_reasons_pure():
    cfg = GateConfig()
    cand = with_stats("v2", stats(rep=0.2, trunc=0.3, empty=0.1, words=5.0))
    inc = with_stats("v1", stats(rep=0.3, trunc=0.0, empty=0.0))
    base = with_stats("v0", stats(rep=0.1, trunc=None, empty=0.5))
    assert degeneration_reasons(cand, [inc, base], cfg) == [
        "repetition rate 0.20 > 0.10 + 0.05 (degeneration guard)",  # the base's 0.10
        "truncation rate 0.30 > 0.00 + 0.05 (degeneration guard)",  # base unknown: inc's
        "near-empty rate 0.10 > 0.00 + 0.02 (degeneration guard)",  # the incumbent's 0.00
        "mean length 5.0 words < floor 8",
    ]
    # exactly at the tolerance passes; a reference without stats is skipped
    edge = with_stats("v2", stats(rep=0.15, trunc=0.05, empty=0.02, words=8.0))
    assert degeneration_reasons(edge, [inc, base, None, with_stats("v9", None)], cfg) == []
    # nothing to compare with: only the absolute floor applies
    assert degeneration_reasons(cand, [None], cfg) == ["mean length 5.0 words < floor 8"]
    # a candidate without stats (an old record) is not judged on them
    assert degeneration_reasons(with_stats("v2", None), [inc], cfg) == []
    off = GateConfig(max_repetition_increase=None, max_truncation_increase=None,
                     max_near_empty_increase=None, min_mean_words=None)
    assert degeneration_reasons(cand, [inc, base], off) == []
    # thresholds_passed applies them, with the baseline as a reference
    passed, reasons = thresholds_passed(cand, inc, VerdictCounts(wins=1), cfg, baseline=base)
    assert not passed and reasons[0].startswith("repetition rate 0.20 > 0.10")


def kinds(version: str, **rates: tuple[float, int]) -> PolicyEval:
    """An eval with per-kind pass rates and how many answers each kind applied to."""
    return PolicyEval(version=version, violation_rate=0.5, mean_words=20.0, n_prompts=48,
                      kind_pass_rates={k: r for k, (r, _) in rates.items()},
                      kind_counts={k: n for k, (_, n) in rates.items()})


def test_kind_drop_guard_catches_one_instruction_bought_with_another():
    """A kind given up while another rose, the violation rate alone not rising."""
    cfg = GateConfig()
    base = kinds("v0", ends_with=(0.38, 13), starts_with=(0.15, 13), lowercase=(0.0, 9))
    cand = kinds("v2", ends_with=(0.06, 13), starts_with=(0.62, 13), lowercase=(0.0, 9))
    assert kind_drop_reasons(cand, [base], cfg) == [
        "ends_with pass rate 0.06 < 0.38 - 0.25 (on 13 answers)"]
    # the higher of incumbent and base is the reference, so drops cannot add up
    inc = kinds("v1", ends_with=(0.20, 13))
    assert kind_drop_reasons(kinds("v2", ends_with=(0.12, 13)), [inc, base], cfg) == [
        "ends_with pass rate 0.12 < 0.38 - 0.25 (on 13 answers)"]
    assert kind_drop_reasons(kinds("v2", ends_with=(0.12, 13)), [inc], cfg) == []
    # exactly at the tolerance passes; a kind on too few answers (either side) is left out
    assert kind_drop_reasons(kinds("v2", ends_with=(0.13, 13)), [base], cfg) == []
    assert kind_drop_reasons(kinds("v2", ends_with=(0.0, 7)), [base], cfg) == []
    assert kind_drop_reasons(cand, [kinds("v0", ends_with=(0.38, 7))], cfg) == []
    # an old record without counts, a missing reference, the guard switched off
    assert kind_drop_reasons(cand, [base.model_copy(update={"kind_counts": {}})], cfg) == []
    assert kind_drop_reasons(cand, [None], cfg) == []
    assert kind_drop_reasons(cand, [base], GateConfig(max_kind_drop=None)) == []
    # thresholds_passed applies it with the baseline as a reference
    passed, reasons = thresholds_passed(cand, kinds("v1", ends_with=(0.1, 13)),
                                        VerdictCounts(wins=5), cfg, baseline=base)
    assert not passed and "ends_with pass rate 0.06 < 0.38 - 0.25 (on 13 answers)" in reasons


def paired_kinds(version: str, passed: list[bool], kind: str = "paragraph_count") -> PolicyEval:
    """An eval of one answer a prompt, each prompt running one check of ``kind``."""
    n = len(passed)
    return PolicyEval(version=version, violation_rate=1 - sum(passed) / n, mean_words=20.0,
                      n_prompts=n, prompts=[f"q{i}" for i in range(n)], passes_checks=passed,
                      kind_pass_rates={kind: sum(passed) / n}, kind_counts={kind: n},
                      kind_results=[{kind: ok} for ok in passed])


def test_kind_drop_guard_pairs_answers_and_leaves_chance_drops_alone():
    """Three of ten answers flipping (0.4 -> 0.1) is what chance does; six is not."""
    cfg = GateConfig()
    inc = paired_kinds("v1", [True] * 4 + [False] * 6)
    three_lost = paired_kinds("v2", [True] + [False] * 9)
    assert kind_drop_reasons(three_lost, [inc], cfg) == []
    # the rate rule alone would have rejected it
    assert kind_drop_reasons(three_lost, [inc], GateConfig(kind_drop_p_value=None)) == [
        "paragraph_count pass rate fell 0.30 > 0.25 from v1 (lost 3, gained 0 of 10 answers; "
        "McNemar p = 0.25)"]
    inc6 = paired_kinds("v1", [True] * 6 + [False] * 4)
    six_lost = paired_kinds("v2", [False] * 10)
    assert kind_drop_reasons(six_lost, [inc6, None], cfg) == [
        "paragraph_count pass rate fell 0.60 > 0.25 from v1 (lost 6, gained 0 of 10 answers; "
        "McNemar p = 0.031)"]
    # gains on other prompts pay losses back: six lost and three gained is a drop of 0.3 at p 0.5
    mixed = paired_kinds("v2", [False] * 6 + [True] * 3 + [False])
    assert kind_drop_reasons(mixed, [inc6], cfg) == []
    # one reason a kind, whichever reference it fell from; too few answers are left out
    assert len(kind_drop_reasons(six_lost, [inc6, inc6.model_copy(update={"version": "v0"})],
                                 cfg)) == 1
    assert kind_drop_reasons(six_lost, [inc6], cfg.model_copy(
        update={"min_kind_responses": 11})) == []


def test_kind_results_pass_a_kind_only_where_all_its_checks_pass():
    from selfimprove.evaluation import kind_results
    from selfimprove.types import CheckResult

    def res(kind: str, ok: bool) -> CheckResult:
        return CheckResult(check_id=f"{kind}-{ok}", kind=kind, passed=ok, hard=True)

    assert kind_results([res("include_words", True), res("include_words", False),
                         res("lowercase", True)]) == {"include_words": False, "lowercase": True}
    assert kind_results([]) == {}


def test_kind_counts_count_each_check_run():
    from selfimprove.types import CheckResult

    def res(kind: str, ok: bool) -> CheckResult:
        return CheckResult(check_id=kind, kind=kind, passed=ok, hard=True)

    results = [[res("lowercase", True), res("ends_with", False)], [res("lowercase", False)], []]
    assert kind_counts(results) == {"ends_with": 1, "lowercase": 2}
    assert kind_pass_rates(results) == {"ends_with": 0.0, "lowercase": 0.5}
    assert kind_counts([]) == {}


def test_gate_config_refuses_impossible_thresholds(tmp_path):
    with pytest.raises(ValidationError, match="max_violation_rate_delta"):
        GateConfig(max_violation_rate_delta=-5)
    with pytest.raises(ValidationError, match="max_violation_rate_delta"):
        GateConfig(max_violation_rate_delta=1.5)
    with pytest.raises(ValidationError, match="max_retention_increase"):
        GateConfig(max_retention_increase=-1)
    for field in ("max_repetition_increase", "max_truncation_increase",
                  "max_near_empty_increase"):
        with pytest.raises(ValidationError, match=field):
            GateConfig(**{field: -0.1})
    with pytest.raises(ValidationError, match="min_mean_words"):
        GateConfig(min_mean_words=-1)
    # the extremes that can still pass are accepted
    GateConfig(max_violation_rate_delta=-1, max_retention_increase=-0.5)
    # and a run config names the file, line and key
    path = tmp_path / "run.yaml"
    path.write_text("cycles: 1\ngate:\n  max_violation_rate_delta: -5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, RunConfig)
    assert info.value.field == "gate.max_violation_rate_delta" and info.value.line == 3
    path.write_text("gate:\n  max_retention_increase: -1\n")
    with pytest.raises(ConfigError, match="max_retention_increase"):
        load_config(path, RunConfig)


def test_gate_config_defaults_guard_degeneration():
    cfg = GateConfig()
    assert (cfg.min_length_ratio, cfg.max_repetition_increase, cfg.max_truncation_increase,
            cfg.max_near_empty_increase, cfg.min_mean_words) == (0.25, 0.05, 0.05, 0.02, 8.0)


# ---- the gate on the embedded model ------------------------------------------------------

REAL_PROMPTS = [
    "What is the capital of France?",
    "Name one use of copper.",
    "Why is the sky blue?",
    "How many legs does a spider have?",
]


def random_adapter(path: Path) -> None:
    """A fresh LoRA adapter whose lora_B is random (PEFT starts it at zero: a no-op adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from selfimprove.models import load_causal_lm

    model = get_peft_model(
        load_causal_lm(None, dtype="float32"),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(str(path))


@pytest.mark.slow
async def test_gate_on_embedded_model(tmp_path):
    from selfimprove.backends.transformers import TransformersBackend

    adapter = tmp_path / "v1"
    random_adapter(adapter)
    constitution = load_constitution("concise")
    backend = TransformersBackend(dtype="float32")
    try:
        v0 = PolicyRef(version="v0", base_model=backend.model_name)
        v1 = PolicyRef(version="v1", base_model=backend.model_name, adapter_path=str(adapter))
        cfg = GateConfig(sampling=SamplingParams(max_new_tokens=24))
        result = await gate(backend, v1, v0, REAL_PROMPTS, constitution, cfg,
                            retention=retention_texts()[:4])
        assert backend.stats.max_rows_in_call >= len(REAL_PROMPTS)  # answers came in one batch
    finally:
        backend.close()
    for ev in (result.candidate, result.incumbent):
        assert 0.0 <= ev.violation_rate <= 1.0
        assert ev.n_prompts == 4 and len(ev.responses) == 4 and len(ev.passes_checks) == 4
        assert 0 <= ev.mean_words <= 24  # at most a word per generated token
        assert ev.retention_nll is not None and 0.5 < ev.retention_nll < 10
    assert all(r.strip() for r in result.incumbent.responses)  # the base model answers
    assert result.candidate.responses != result.incumbent.responses  # the adapter is active
    assert result.candidate.retention_nll != result.incumbent.retention_nll
    assert result.wins + result.ties + result.losses + result.abstains == 4
    if result.win_rate is not None:
        low, high = result.win_rate_ci
        assert 0.0 <= low <= result.win_rate <= high <= 1.0
    assert result.length_ratio is not None and result.length_ratio > 0
    assert math.isfinite(result.retention_increase)
    assert len(result.candidate.finish_reasons) == 4 and result.candidate.degeneration.n == 4
    assert result.judge is not None and result.judge.n == 4
    # the retention change is the candidate's NLL against the incumbent's, both measured here
    assert result.retention_increase == pytest.approx(
        (result.candidate.retention_nll - result.incumbent.retention_nll)
        / result.incumbent.retention_nll
    )
    # the recorded decision is the one the thresholds give on the recorded measurements
    counts = VerdictCounts(wins=result.wins, ties=result.ties, losses=result.losses,
                           abstains=result.abstains)
    assert thresholds_passed(result.candidate, result.incumbent, counts, cfg,
                             judge=result.judge) == (result.passed, result.reasons)


async def test_fewer_violations_are_evidence_without_the_judge(constitution):
    """A candidate that breaks fewer rules is better whatever a judge at chance says."""
    answers = {"v0": "plain rude answer to {prompt}", "v1": "plain answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0}, prefer=None)
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(min_mean_words=None))
    assert result.candidate.violation_rate == 0.0 < result.incumbent.violation_rate
    assert result.passed and result.reasons == []


async def test_max_p_value_asks_fewer_violations_to_be_beyond_chance(constitution):
    """Gaining every one of four prompts happens by chance once in eight (two-sided): enough
    under a 0.2 bar, not under 0.05."""
    answers = {"v0": "plain rude answer to {prompt}", "v1": "plain answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0}, prefer=None)
    strict = GateConfig(min_mean_words=None, max_p_value=0.05)
    result = await gate(backend, V1, V0, PROMPTS, constitution, strict)
    assert not result.passed
    assert ("violations 1.00 -> 0.00 (within chance: gained 4, lost 0; McNemar p = 0.12 > 0.05)"
            in result.reasons[0]), result.reasons
    loose = strict.model_copy(update={"max_p_value": 0.2})
    assert (await gate(backend, V1, V0, PROMPTS, constitution, loose)).passed
