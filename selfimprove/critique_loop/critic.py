"""critique: the critic critiques the current response against sampled principles."""

from __future__ import annotations

import random

from langgraph.runtime import Runtime

from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.critique_loop.text import failed_checks_text, prompt_seed
from selfimprove.prompts import user
from selfimprove.types import Critique


async def critique(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    ctx = runtime.context
    rnd = state.get("round", 0)
    rng = random.Random(prompt_seed(ctx.seed, state["prompt_id"], rnd))
    principles = ctx.constitution.sample_principles(ctx.principles_per_round, rng)
    checks = state.get("checks", [])
    failed = [c.check_id for c in checks if not c.passed]
    if ctx.critic == "checks" and failed:
        # A small critic model mostly repeats the response back; the failed rules are exact.
        return {"critique": Critique(round=rnd, principle_ids=[p.id for p in principles],
                                     failed_checks=failed,
                                     text=failed_checks_text(checks).strip())}
    conv = user(
        "critique",
        prompt=state["prompt"],
        response=state["response"],
        failed_checks=failed_checks_text(checks),
        requests=" ".join(p.critique for p in principles),
    )
    ((out,),) = await ctx.roles.critic.generate([conv], ctx.roles.critic_sampling)
    return {
        "critique": Critique(
            round=rnd,
            principle_ids=[p.id for p in principles],
            failed_checks=failed,
            text=out.text,
        ),
        "generated_tokens": out.num_tokens,
    }
