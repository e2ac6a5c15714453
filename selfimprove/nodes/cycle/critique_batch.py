"""critique: run the critique graph over the cycle's prompts with the current policy."""

from __future__ import annotations

import dataclasses

from langgraph.runtime import Runtime

from selfimprove.graph.critique import iter_critiques
from selfimprove.graph.cycle_state import CycleContext, CycleState
from selfimprove.nodes.cycle.common import timed


async def critique_batch(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    seconds = dict(state.get("stage_seconds", {}))
    current = ctx.registry.current()
    stats = getattr(ctx.critique.roles.judge, "stats", None)
    judged_before = stats.seconds_forward if stats else 0.0
    with timed(seconds, "generation"):
        await ctx.critique.roles.policy.load_policy(current)
        cctx = dataclasses.replace(
            ctx.critique, policy_version=current.version, seed=ctx.cfg.seed + state["cycle"]
        )
        batch = [(pid, text) for pid, text in state["batch"]]
        results: list[dict | None] = [None] * len(batch)
        done = 0
        async for i, result in iter_critiques(batch, cctx, ctx.cfg.critique.max_concurrency):
            results[i] = result.model_dump(mode="json")
            done += 1
            ctx.progress("critique", f"prompts done {done}/{len(batch)}")
    if stats is not None:  # judging runs inside the critique graph: split its time out
        seconds["judging"] = stats.seconds_forward - judged_before
        seconds["generation"] -= seconds["judging"]
    return {"results": [r for r in results if r is not None], "stage_seconds": seconds}
