"""The control arm: trimmed first answers or check-ranked samples, harvested like the loop's."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.config import ControlConfig, HarvestConfig
from selfimprove.constitution import load_constitution
from selfimprove.critique_loop.state import CritiqueContext
from selfimprove.critique_loop.text import prompt_seed
from selfimprove.harvest import harvest
from selfimprove.improvement_cycle.control import control_kind, control_results
from selfimprove.roles import Roles
from selfimprove.sources import PromptRecord
from selfimprove.types import PolicyRef, SamplingParams

CONSTITUTION = """
name: control-test
version: 1
principles:
  - id: brief
    critique: Is it brief?
    revision: Make it brief.
checks:
{checks}
judge:
  pairwise: Pick the better response.
  pointwise:
    - points: 1
      criterion: It is brief.
"""
MAX_8 = "  - id: short\n    kind: max_words\n    value: 8\n"
NO_FILLER = "  - id: no_filler\n    kind: forbid_phrases\n    phrases: [basically]\n"

# 17 words in three sentences; the first 8 words end inside the second sentence.
LONG = "The sky looks blue to us. Sunlight scatters off the air. Blue light scatters the most."
TRIMMED = "The sky looks blue to us."
SHORT = "Air scatters blue light most."
BATCH = [PromptRecord(id="p1", prompt="Why is the sky blue?")]


def constitution(tmp_path: Path, checks: str = MAX_8):
    path = tmp_path / "control-test.yaml"
    path.write_text(CONSTITUTION.format(checks=checks))
    return load_constitution(path)


def context(tmp_path: Path, backend, checks: str = MAX_8, **kw) -> CritiqueContext:
    return CritiqueContext(constitution=constitution(tmp_path, checks), roles=Roles(backend), **kw)


class SamplesBackend(ScriptedBackend):
    """Answers each conversation's samples in turn from ``samples``; a sample without a final
    full stop hit the token cap. Every params seen is recorded."""

    def __init__(self, samples: list[str]) -> None:
        super().__init__(self._next)
        self.samples = samples
        self.i = 0
        self.params: list[SamplingParams] = []

    def _next(self, conv, params: SamplingParams) -> str:
        self.params.append(params)
        text = self.samples[self.i % len(self.samples)]
        self.i += 1
        return text

    async def generate(self, conversations, params):
        outs = await super().generate(conversations, params)
        return [
            [c if c.text.endswith(".") else c.model_copy(update={"finish_reason": "length"})
             for c in cs]
            for cs in outs
        ]


# ---- control_kind ------------------------------------------------------------------------


def test_control_kind_auto_trims_only_with_a_hard_word_limit(tmp_path):
    auto = ControlConfig()
    assert auto.kind == "auto"
    assert control_kind(auto, constitution(tmp_path, MAX_8)) == "trim"
    assert control_kind(auto, constitution(tmp_path, NO_FILLER)) == "best_of_checks"
    soft = MAX_8 + "    hard: false\n"
    assert control_kind(auto, constitution(tmp_path, soft)) == "best_of_checks"
    # an explicit kind is taken as given
    limited = constitution(tmp_path, MAX_8)
    assert control_kind(ControlConfig(kind="best_of_checks"), limited) == "best_of_checks"
    assert control_kind(ControlConfig(kind="trim"), limited) == "trim"


# ---- trim --------------------------------------------------------------------------------


async def test_trim_cuts_the_first_answer_at_a_sentence_end_within_the_limit(tmp_path):
    backend = ScriptedBackend(lambda conv, params: LONG)
    ctx = context(tmp_path, backend)
    (res,) = await control_results(ctx, BATCH, ControlConfig(kind="trim"))
    assert backend.calls == [("generate", 1)]  # one batch, no critic, reviser or judge
    assert res.first_response == LONG and res.final_response == TRIMMED
    assert (res.prompt_id, res.prompt) == BATCH[0].pair
    assert res.constitution == "control-test" and res.policy_version == "v0"
    assert [c.passed for c in res.rounds[0].checks] == [False]  # 17 words > 8
    assert res.final_passes and not res.final_truncated
    assert res.verdict.winner == "b" and res.verdict.decided_by == "checks"
    assert res.generated_tokens == len(LONG.split())

    out = harvest([res], HarvestConfig(), cycle=1)
    (pair,) = out.pairs
    assert pair["chosen"][0]["content"] == TRIMMED
    assert pair["rejected"][0]["content"] == LONG
    assert pair["decided_by"] == "checks" and pair["margin"] == 1.0
    assert pair["strategy"] == "revision" and pair["cycle"] == 1
    assert [row["messages"][1]["content"] for row in out.sft] == [TRIMMED]
    assert out.kept == {"revision": 1, "sft": 1} and out.dropped == {}


async def test_trim_uses_the_tightest_hard_limit(tmp_path):
    checks = (
        "  - id: loose\n    kind: max_words\n    value: 30\n" + MAX_8
        + "  - id: advisory\n    kind: max_words\n    value: 3\n    hard: false\n"
    )
    backend = ScriptedBackend(lambda conv, params: LONG)
    (res,) = await control_results(context(tmp_path, backend, checks), BATCH,
                                   ControlConfig(kind="auto"))
    assert res.final_response == TRIMMED  # 8 words, not 30 (hard) nor 3 (soft)


async def test_trim_leaves_a_short_answer_alone_and_harvest_drops_it(tmp_path):
    backend = ScriptedBackend(lambda conv, params: f"  {SHORT}\n")
    (res,) = await control_results(context(tmp_path, backend), BATCH, ControlConfig())
    assert res.final_response == SHORT
    assert res.verdict.winner == "tie"  # both pass: nothing to learn from the checks
    out = harvest([res], HarvestConfig())
    assert out.pairs == [] and out.dropped == {"identical": 1}


async def test_trim_answers_as_the_policy_version(tmp_path):
    backend = ScriptedBackend(lambda conv, params: LONG)
    v2 = PolicyRef(version="v2", adapter_path="policies/v2/adapter")
    ctx = CritiqueContext(constitution=constitution(tmp_path), roles=Roles(backend).following(v2))
    (res,) = await control_results(ctx, BATCH, ControlConfig(kind="trim"))
    assert res.policy_version == "v2"
    assert backend.calls == [("load_policy", 0), ("generate", 1)] and backend.policy == v2
    (pair,) = harvest([res], HarvestConfig()).pairs
    assert pair["policy_version"] == "v2"


# ---- best of checks ----------------------------------------------------------------------


async def test_best_of_checks_prefers_a_passing_sample(tmp_path):
    backend = SamplesBackend([LONG, SHORT, LONG, "Blue light scatters."])
    ctx = context(tmp_path, backend, seed=3)
    cfg = ControlConfig(kind="best_of_checks", samples=4)
    batch = [PromptRecord(id="p1", prompt="Why is the sky blue?"),
             PromptRecord(id="p2", prompt="Why is the sea blue?")]
    results = await control_results(ctx, batch, cfg)
    assert backend.calls == [("generate", 1), ("generate", 1)]  # N samples per prompt
    assert {(p.n, p.seed) for p in backend.params} == {
        (4, prompt_seed(3, "p1")), (4, prompt_seed(3, "p2"))
    }
    assert all(p.temperature == ctx.roles.sample_sampling.temperature for p in backend.params)
    for res in results:
        # the first passing sample is the final answer, the first failing one the first
        assert res.final_response == SHORT and res.first_response == LONG
        assert res.final_passes and res.verdict.winner == "b"
        assert res.verdict.decided_by == "checks"
    out = harvest(results, HarvestConfig())
    assert [(p["prompt_id"], p["chosen"][0]["content"], p["rejected"][0]["content"],
             p["decided_by"]) for p in out.pairs] == [
        ("p1", SHORT, LONG, "checks"), ("p2", SHORT, LONG, "checks"),
    ]


async def test_best_of_checks_asks_for_every_prompt_at_once(tmp_path):
    # One prompt after another would leave the batching backend one prompt per batch.
    import asyncio

    class Gathered(SamplesBackend):
        in_flight = peak = 0

        async def generate(self, conversations, params):
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            await asyncio.sleep(0.01)  # the batcher's wait for more requests
            self.in_flight -= 1
            return await super().generate(conversations, params)

    backend = Gathered([LONG, SHORT])
    batch = [PromptRecord(id=f"p{i}", prompt=f"Question {i}?") for i in range(5)]
    results = await control_results(context(tmp_path, backend), batch,
                                     ControlConfig(kind="best_of_checks", samples=2))
    assert backend.peak == 5
    assert [r.prompt_id for r in results] == [f"p{i}" for i in range(5)]  # prompt order kept


async def test_best_of_checks_skips_samples_cut_by_the_token_cap(tmp_path):
    # "Blue light" passes the word limit but hit the cap (no full stop): never chosen
    backend = SamplesBackend(["Blue light", LONG, SHORT])
    (res,) = await control_results(context(tmp_path, backend), BATCH,
                                   ControlConfig(kind="best_of_checks", samples=3))
    assert (res.first_response, res.final_response) == (LONG, SHORT)


@pytest.mark.parametrize(
    ("samples", "dropped", "sft"),
    [
        # all pass: no pair (the checks cannot tell them apart), the chosen one is an SFT row
        ([SHORT, "Blue light scatters."], {"tie": 1}, [SHORT]),
        # all fail: nothing to teach at all
        ([LONG, LONG + " Really."], {"checks_failed_sft": 1}, []),
    ],
)
async def test_best_of_checks_without_a_split_gives_no_pair(tmp_path, samples, dropped, sft):
    backend = SamplesBackend(samples)
    (res,) = await control_results(context(tmp_path, backend), BATCH,
                                   ControlConfig(kind="best_of_checks", samples=2))
    assert res.verdict.winner == "tie"
    out = harvest([res], HarvestConfig())
    assert out.pairs == []
    assert [row["messages"][1]["content"] for row in out.sft] == sft
    assert dropped.items() <= out.dropped.items()
    assert sum(out.dropped.values()) == 2 - len(sft)  # the pair and any SFT row, once each
