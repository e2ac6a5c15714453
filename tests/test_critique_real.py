"""The critique loop end to end on the embedded model (a few short prompts)."""

from __future__ import annotations

import pytest

from selfimprove.constitution import load_constitution
from selfimprove.critique_loop import CritiqueContext, Roles, critique_many
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
