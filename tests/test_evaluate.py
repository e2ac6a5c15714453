"""The evaluation gate: pure helpers, gate logic on a scripted backend, and a real gate run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.constitution import load_constitution
from selfimprove.evaluate import (
    EvalResult,
    GateConfig,
    PolicyEval,
    VerdictCounts,
    count_verdicts,
    decide,
    evaluate_policy,
    gate,
    retention_texts,
    wilson_interval,
    win_rate,
)
from selfimprove.types import PolicyRef, SamplingParams, Verdict

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

    Every judge call records the version served while judging.
    """

    def __init__(self, answers: dict[str, str], prefer: str | None = "better") -> None:
        super().__init__(self._respond, self._score)
        self.answers = answers
        self.prefer = prefer
        self.judged_with: list[str] = []

    def _respond(self, conv, params: SamplingParams) -> str:
        prompt = conv[-1].content
        return self.answers[self.policy.version].format(prompt=prompt)

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


def test_decide_passes_when_every_threshold_holds():
    cand, inc = evals(cand_words=12.0, inc_words=10.0, cand_nll=2.1)
    assert decide(cand, inc, VerdictCounts(wins=5, losses=5), GateConfig()) == (True, [])


def test_decide_names_every_failed_threshold():
    cand, inc = evals(cand_viol=0.3, inc_viol=0.2, cand_words=15.0, cand_nll=2.2)
    passed, reasons = decide(cand, inc, VerdictCounts(wins=3, ties=1, losses=6), GateConfig())
    assert not passed
    assert reasons == [
        "win rate 0.35 < 0.40",
        "violation rate 0.20 -> 0.30 (delta +0.10 > +0.00)",
        "length ratio 1.50 > 1.25 (10.0 -> 15.0 words)",
        "retention NLL increase +10.0% > +5.0% (2.000 -> 2.200)",
    ]


def test_decide_skips_thresholds_set_to_none():
    cand, inc = evals(cand_viol=0.9, cand_words=40.0, cand_nll=5.0)
    off = GateConfig(min_win_rate=None, max_violation_rate_delta=None, max_length_ratio=None,
                     max_retention_increase=None)
    assert decide(cand, inc, VerdictCounts(losses=10), off) == (True, [])
    assert decide(cand, inc, VerdictCounts(losses=10), off.model_copy(
        update={"max_length_ratio": 5.0})) == (True, [])


def test_decide_boundaries_and_unknowns():
    cand, inc = evals(cand_viol=0.2, inc_viol=0.2, cand_words=12.5)
    # exactly on the thresholds passes
    assert decide(cand, inc, VerdictCounts(wins=2, losses=3), GateConfig()) == (True, [])
    passed, reasons = decide(cand, inc, VerdictCounts(abstains=4), GateConfig())
    assert reasons == ["win rate unknown: all 4 judgments abstained"]
    cand, inc = evals(cand_words=3.0, inc_words=0.0, cand_nll=None)
    passed, reasons = decide(cand, inc, VerdictCounts(wins=1), GateConfig())
    assert reasons == ["length ratio undefined: incumbent mean 0 words, candidate 3.0"]


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
    assert backend.policy == V1  # evaluating serves the policy
    assert backend.calls == [("load_policy", 0), ("generate", 2), ("nll", len(retention_texts()))]
    assert ev.responses == ["a rude answer to q1", "a rude answer to q2"]
    assert ev.violation_rate == 1.0 and ev.passes_checks == [False, False]
    assert ev.mean_words == 5.0 and ev.retention_nll == 1.5 and ev.n_prompts == 2
    backend.calls.clear()
    ev = await evaluate_policy(backend, V1, ["q1"], constitution, SamplingParams(), retention=())
    assert ev.retention_nll is None and ("nll", 0) not in backend.calls
    await evaluate_policy(backend, V1, ["q1"], constitution, SamplingParams(), retention=["x"])
    assert backend.calls[-1] == ("nll", 1)


async def test_gate_promotes_better_candidate_judged_by_base_and_restores(constitution):
    answers = {"v1": "plain answer to {prompt}", "v2": "better answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 9.0, "v1": 2.0, "v2": 2.02})
    await backend.load_policy(V1)  # the incumbent is being served, as in a running loop
    backend.calls.clear()
    result = await gate(backend, V2, V1, PROMPTS, constitution, GateConfig(), base=V0)
    assert isinstance(result, EvalResult)
    assert result.passed and result.reasons == [] and result.unchecked == []
    assert (result.wins, result.ties, result.losses, result.abstains) == (4, 0, 0, 0)
    assert result.win_rate == 1.0
    assert result.win_rate_ci == pytest.approx(wilson_interval(4, 4))
    assert result.length_ratio == 1.0
    assert result.retention_increase == pytest.approx(0.01)
    assert result.incumbent.version == "v1" and result.candidate.version == "v2"
    assert result.candidate.responses == [f"better answer to {p}" for p in PROMPTS]
    assert result.thresholds == GateConfig().model_dump(mode="json")
    # both orders for every prompt, all judged by v0, and v1 served again afterwards
    assert backend.judged_with == ["v0"] * 8
    assert backend.policy == V1
    assert [c for c in backend.calls if c[0] == "generate"] == [("generate", 4)] * 2
    assert all(v.winner == "b" for v in result.verdicts)


async def test_gate_rejects_worse_candidate(constitution):
    answers = {"v0": "better answer to {prompt}", "v1": "plain answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    assert not result.passed
    assert result.reasons == ["win rate 0.00 < 0.40"]
    assert (result.wins, result.losses) == (0, 4)
    low, high = result.win_rate_ci
    assert low == 0.0 and high == pytest.approx(0.4899, abs=1e-4)
    assert backend.policy == V0


async def test_gate_rejects_longer_candidate(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt} with padding"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    assert result.win_rate == 1.0  # the judge likes it, the length guard does not
    assert result.reasons == ["length ratio 1.50 > 1.25 (4.0 -> 6.0 words)"]
    assert not result.passed


async def test_gate_rejects_forgetting_candidate(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.4})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    assert result.reasons == ["retention NLL increase +20.0% > +5.0% (2.000 -> 2.400)"]
    assert result.retention_increase == pytest.approx(0.2)
    assert not result.passed


async def test_gate_rejects_candidate_that_violates_checks(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better rude answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0})
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    # the judge prefers "better", but a response failing a hard check never wins
    assert all(v.decided_by == "checks" and v.winner == "a" for v in result.verdicts)
    assert result.reasons == [
        "win rate 0.00 < 0.40",
        "violation rate 0.00 -> 1.00 (delta +1.00 > +0.00)",
    ]  # a length ratio of exactly 1.25 (5 words vs 4) is within the guard
    assert result.length_ratio == 1.25


async def test_gate_counts_flips_as_ties(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "other answer to {prompt}"}
    backend = NllGateBackend(answers, {"v0": 2.0, "v1": 2.0}, prefer=None)
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    assert (result.wins, result.ties, result.losses) == (0, 4, 0)
    assert result.win_rate == 0.5 and result.passed


async def test_gate_judge_can_be_the_incumbent(constitution):
    answers = {"v1": "plain answer to {prompt}", "v2": "better answer to {prompt}"}
    backend = GateBackend(answers)
    await backend.load_policy(V2)  # whatever was served before comes back
    cfg = GateConfig(judge_version="incumbent")
    result = await gate(backend, V2, V1, PROMPTS, constitution, cfg)
    assert backend.judged_with == ["v1"] * 8
    assert backend.policy == V2 and result.passed


async def test_gate_with_separate_judge_backend_leaves_its_policy_alone(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    policy_backend = GateBackend(answers)
    judge_backend = GateBackend({}, prefer="plain")
    result = await gate(policy_backend, V1, V0, PROMPTS, constitution, GateConfig(),
                        judge_backend=judge_backend)
    assert result.reasons == ["win rate 0.00 < 0.40"]
    assert not any(kind == "logprobs" for kind, _ in policy_backend.calls)
    assert ("load_policy", 0) not in judge_backend.calls
    assert judge_backend.judged_with == ["v0"] * 8


async def test_gate_reuses_incumbent_eval(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    backend = GateBackend(answers)
    inc = await evaluate_policy(backend, V0, PROMPTS, constitution, GateConfig().sampling)
    backend.calls.clear()
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig(), incumbent_eval=inc)
    assert [c for c in backend.calls if c[0] == "generate"] == [("generate", 4)]  # v1 only
    assert result.incumbent == inc and result.passed
    # no measurement of retention on a backend without sequence_nll: noted, not failed
    assert result.retention_increase is None
    assert result.unchecked == ["retention not measured (the backend has no sequence_nll)"]
    with pytest.raises(ValueError, match="incumbent_eval is for v0, but the incumbent is v1"):
        await gate(backend, V2, V1, PROMPTS, constitution, GateConfig(), incumbent_eval=inc)
    with pytest.raises(ValueError, match="other prompts"):
        await gate(backend, V1, V0, PROMPTS[:2], constitution, GateConfig(), incumbent_eval=inc)


async def test_gate_abstaining_judge_fails_the_win_rate(constitution):
    def respond(conv, params):
        if "Which response is better" in conv[-1].content:
            return "I cannot say."
        return f"answer to {conv[-1].content}"

    backend = ScriptedBackend(respond)  # no log-probabilities: generated verdicts, unparseable
    result = await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    assert result.abstains == 4 and result.win_rate is None
    assert result.win_rate_ci == (0.0, 1.0)
    assert result.reasons == ["win rate unknown: all 4 judgments abstained"]


async def test_gate_restores_policy_when_judging_fails(constitution):
    answers = {"v0": "plain answer to {prompt}", "v1": "better answer to {prompt}"}
    backend = GateBackend(answers)

    def broken(conv, options):
        raise RuntimeError("judge backend down")

    backend.scorer = broken
    await backend.load_policy(V1)
    with pytest.raises(RuntimeError, match="judge backend down"):
        await gate(backend, V1, V0, PROMPTS, constitution, GateConfig())
    assert backend.policy == V1


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
        result = await gate(backend, v1, v0, REAL_PROMPTS, constitution, cfg, base=v0,
                            retention=retention_texts()[:4])
        assert backend.policy == v0
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
    assert result.passed == (result.reasons == [])
