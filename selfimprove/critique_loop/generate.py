"""generate: the policy's first response (and, for best-of-N, extra samples)."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.critique_loop.text import prompt_seed
from selfimprove.types import Message


async def generate(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    ctx = runtime.context
    conv = [Message(role="user", content=state["prompt"])]
    ((first,),) = await ctx.roles.policy.generate([conv], ctx.roles.policy_sampling)
    update: CritiqueState = {
        "first_response": first.text,
        "response": first.text,
        "round": 0,
        "generated_tokens": first.num_tokens,
    }
    if ctx.num_samples:
        params = ctx.roles.sample_sampling.model_copy(
            update={"n": ctx.num_samples, "seed": prompt_seed(ctx.seed, state["prompt_id"])}
        )
        (samples,) = await ctx.roles.policy.generate([conv], params)
        # Only samples that ended on their own: one cut off by the token budget is no answer
        # to prefer, and its passing a length check would say more about the budget.
        update["samples"] = [s.text for s in samples if s.finish_reason != "length"]
        update["generated_tokens"] += sum(s.num_tokens for s in samples)
    return update
