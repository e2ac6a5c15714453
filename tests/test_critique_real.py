"""The critique loop end to end on the embedded model (a few short prompts)."""

from __future__ import annotations

import pytest

from selfimprove.backends.base import Backend
from selfimprove.config import HarvestConfig
from selfimprove.constitution import load_constitution
from selfimprove.critique_loop import CritiqueContext, Roles, critique_many
from selfimprove.harvest import harvest
from selfimprove.sources import PromptRecord, parse_prompt_checks
from selfimprove.types import SamplingParams

pytestmark = pytest.mark.slow


async def test_critique_loop_on_embedded_model(embedded_backend):
    roles = Roles(
        policy=embedded_backend,
        policy_sampling=SamplingParams(max_new_tokens=40),
        critic_sampling=SamplingParams(max_new_tokens=24),
        reviser_sampling=SamplingParams(max_new_tokens=40),
    )
    ctx = CritiqueContext(constitution=load_constitution("concise"), roles=roles, max_rounds=1)
    calls_before = embedded_backend.stats.generate_calls
    prompts = ["How do I get better sleep?", "What is photosynthesis?", "Why is the sky blue?"]
    results = await critique_many(prompts, ctx)
    assert [r.prompt for r in results] == prompts
    for r in results:
        assert r.first_response and len(r.rounds) == 1
        rec = r.rounds[0]
        assert rec.critique is not None and rec.critique.text
        assert rec.revision and r.final_response == rec.revision
        assert {c.check_id for c in r.final_checks} >= {"max_80_words", "no_filler_phrases"}
        v = r.verdict
        assert v is not None and v.winner in {"a", "b", "tie"}
        if v.a_passes_checks != v.b_passes_checks:
            # The checks decide (40 tokens often cut the first answer: it fails "ended").
            assert v.decided_by == "checks" and v.winner == ("b" if v.b_passes_checks else "a")
        else:
            assert len(v.orders) == 2 and all(o.method == "logprob" for o in v.orders)
            assert 0.0 <= v.p_b <= 1.0
    # three prompts, three stages of generation: batched, far fewer calls than requests
    assert embedded_backend.stats.generate_calls - calls_before < 3 * 3


class Recording(Backend):
    """The embedded backend, remembering every conversation it was asked to answer."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.seen: list[list[str]] = []

    async def generate(self, conversations, params):
        self.seen += [[m.content for m in conv] for conv in conversations]
        return await self.inner.generate(conversations, params)

    async def option_logprobs(self, conversations, options):
        return await self.inner.option_logprobs(conversations, options)

    async def load_policy(self, policy):
        await self.inner.load_policy(policy)

    @property
    def policy(self):
        return self.inner.policy


async def test_samples_after_demonstrations_are_kept_against_the_bare_prompt(embedded_backend):
    constitution = load_constitution("instructions")
    backend = Recording(embedded_backend)
    roles = Roles(policy=backend, policy_sampling=SamplingParams(max_new_tokens=48),
                  sample_sampling=SamplingParams(max_new_tokens=48, temperature=0.8),
                  reviser_sampling=SamplingParams(max_new_tokens=48))
    ctx = CritiqueContext(constitution=constitution, roles=roles, max_rounds=1, critic="checks",
                          num_samples=2, score_samples=False)
    prompt = "Describe a lighthouse. Write in lowercase letters only."
    record = PromptRecord(id="lighthouse", prompt=prompt,
                          checks=parse_prompt_checks([{"kind": "lowercase"}]))
    (result,) = await critique_many([record], ctx)
    demo_prompts = [e.prompt for e in constitution.examples]
    with_demos = [conv for conv in backend.seen if conv[:1] == demo_prompts[:1]]
    assert with_demos and all(conv[-1] == prompt for conv in with_demos)
    assert [conv for conv in backend.seen if conv == [prompt]]  # the first answer: bare
    assert result.conversation()[0].content == prompt and len(result.conversation()) == 1
    assert any(c.check_id == "lowercase" for c in result.final_checks)
    out = harvest([result], HarvestConfig(strategies=["revision", "best_of_n"]), cycle=1)
    for row in out.sft:  # whatever was kept trains on the bare prompt, never the demonstrations
        assert row["messages"][0] == {"role": "user", "content": prompt}
        assert len(row["messages"]) == 2
    for row in out.pairs:
        assert row["prompt"] == [{"role": "user", "content": prompt}]


async def test_checks_repair_the_embedded_models_answers(embedded_backend):
    # One-sentence answers end within the budget; the 135M model rarely writes in lowercase
    # and never adds the closing words on its own, so the repairs have work to do.
    roles = Roles(policy=embedded_backend, policy_sampling=SamplingParams(max_new_tokens=64),
                  sample_sampling=SamplingParams(max_new_tokens=64, temperature=0.8),
                  reviser_sampling=SamplingParams(max_new_tokens=64))
    ctx = CritiqueContext(constitution=load_constitution("instructions"), roles=roles,
                          max_rounds=1, critic="checks", reviser="repair", num_samples=2,
                          score_samples=False, sample_with_examples=False)
    checks = parse_prompt_checks([{"kind": "lowercase"},
                                  {"kind": "ends_with", "value": "stay safe."}])
    records = [PromptRecord(id=f"p{i}", prompt=f"In one sentence, say what {thing} is. Write in "
                            "lowercase letters only and end with the words 'stay safe.'",
                            checks=checks)
               for i, thing in enumerate(["a lighthouse", "a volcano", "a thunderstorm"])]
    results = await critique_many(records, ctx)
    by_checks = [r for r in results if r.rounds and r.rounds[0].reviser != "model"]
    assert by_checks, [r.first_response for r in results]
    for r in by_checks:
        assert r.final_passes and r.final_response.endswith("stay safe.")
        assert r.final_response == r.final_response.lower()
    out = harvest(results, HarvestConfig(strategies=["revision", "best_of_n"]), cycle=1)
    kept = {row["strategy"] for row in out.sft}
    assert kept & {"repaired_revision", "sample_revision"}
    for row in out.sft:
        assert len(row["messages"]) == 2 and row["messages"][0]["content"].startswith("In one")
