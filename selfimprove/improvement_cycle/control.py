"""The control arm: the cheapest thing that could explain what the loop achieves.

It replaces the critique graph in an otherwise identical run (same prompts, seed, training and
gate), so the report can show whether critique and revision earn their cost:

- ``trim``: the policy's first answer trimmed to the constitution's word limit, at the last
  full sentence (for a length-bound constitution, learned brevity is the obvious explanation);
- ``best_of_checks``: N sampled answers ranked by the executable checks alone, a passing one
  preferred over a failing one (rejection sampling, no critic and no judge).

The results have the critique graph's shape (first response, final response, one round), so
harvest, training and the gate treat them exactly as the loop's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from selfimprove.checks import run_checks
from selfimprove.config import ControlConfig
from selfimprove.constitution import Constitution
from selfimprove.critique_loop.state import CritiqueContext
from selfimprove.critique_loop.text import prompt_seed, trim_to_words, word_limit
from selfimprove.judges import checks_verdict
from selfimprove.sources import PromptRecord
from selfimprove.types import CritiqueResult, Message, RoundRecord, Verdict, passes

__all__ = ["control_kind", "control_results"]


def control_kind(cfg: ControlConfig, constitution: Constitution) -> str:
    """``cfg.kind``, with ``auto`` resolved: trim when the constitution limits words."""
    if cfg.kind != "auto":
        return cfg.kind
    return "trim" if word_limit(constitution) is not None else "best_of_checks"


def _result(ctx: CritiqueContext, record: PromptRecord, first: str, final: str,
            tokens: int) -> CritiqueResult:
    checks = [*ctx.constitution.checks, *record.checks]
    first_checks = run_checks(checks, first)
    final_checks = run_checks(checks, final)
    a_ok, b_ok = passes(first_checks), passes(final_checks)
    verdict = (checks_verdict(a_passes=a_ok, b_passes=b_ok) if a_ok != b_ok
               else Verdict(winner="tie", decided_by="checks", a_passes_checks=a_ok,
                            b_passes_checks=b_ok))
    return CritiqueResult(
        prompt_id=record.id,
        prompt=record.prompt,
        messages=list(record.messages),  # the conversation the pairs answer, system turn too
        prompt_checks=record.checks_json(),
        constitution=ctx.constitution.name,
        constitution_hash=ctx.constitution.content_hash,
        policy_version=ctx.policy_version,
        first_response=first,
        final_response=final,
        rounds=[RoundRecord(round=0, response=first, checks=first_checks, revision=final)],
        final_checks=final_checks,
        verdict=verdict,
        generated_tokens=tokens,
    )


async def control_results(
    ctx: CritiqueContext, batch: Sequence[PromptRecord], cfg: ControlConfig
) -> list[CritiqueResult]:
    """One result per prompt, made without critic, reviser or judge."""
    convs = [r.to_messages() for r in batch]
    policy = ctx.roles.policy
    if control_kind(cfg, ctx.constitution) == "trim":
        limit = word_limit(ctx.constitution)
        assert limit is not None, "trim needs a hard max_words check"
        outs = await policy.generate(convs, ctx.roles.policy_sampling)
        return [
            _result(ctx, record, out.text, trim_to_words(out.text, limit), out.num_tokens)
            for record, (out,) in zip(batch, outs, strict=True)
        ]

    async def best_of_checks(record: PromptRecord, conv: list[Message]) -> CritiqueResult:
        params = ctx.roles.sample_sampling.model_copy(
            update={"n": cfg.samples, "seed": prompt_seed(ctx.seed, record.id)}
        )
        (samples,) = await policy.generate([conv], params)
        texts = [s.text for s in samples if s.finish_reason == "stop"] or [samples[0].text]
        ok = [passes(run_checks([*ctx.constitution.checks, *record.checks], t)) for t in texts]
        chosen = next((t for t, good in zip(texts, ok, strict=True) if good), texts[0])
        rejected = next((t for t, good in zip(texts, ok, strict=True) if not good), texts[-1])
        tokens = sum(s.num_tokens for s in samples)
        return _result(ctx, record, rejected, chosen, tokens)

    # All prompts at once, so the backend batches their samples as it does the loop's.
    return list(await asyncio.gather(*(best_of_checks(r, c)
                                       for r, c in zip(batch, convs, strict=True))))
