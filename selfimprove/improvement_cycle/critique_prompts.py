"""critique: run the critique graph (or the control arm) over the cycle's prompts with the
current policy."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.backends.served import unwrap
from selfimprove.critique_loop.graph import iter_critiques
from selfimprove.improvement_cycle.control import control_results
from selfimprove.improvement_cycle.state import CycleContext, CycleState
from selfimprove.improvement_cycle.timing import timed
from selfimprove.sources import PromptRecord


async def critique_prompts(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    seconds = dict(state.get("stage_seconds", {}))
    # critique.seed seeds the loop's sampling; a new seed each cycle draws new principles
    cctx = ctx.critique_for(ctx.registry.current(), seed=ctx.critique.seed + state["cycle"])
    stats = getattr(unwrap(ctx.critique.roles.judge), "stats", None)  # type: ignore[arg-type]
    judged_before = stats.seconds_forward if stats else 0.0
    batch = [PromptRecord.model_validate(r) for r in state["batch"]]
    with timed(seconds, "generation"):
        if ctx.arm == "control":
            done = await control_results(cctx, batch, ctx.cfg.control)
            results = [r.model_dump(mode="json") for r in done]
        else:
            slots: list[dict | None] = [None] * len(batch)
            finished = 0
            async for i, result in iter_critiques(batch, cctx, ctx.cfg.critique.max_concurrency):
                slots[i] = result.model_dump(mode="json")
                finished += 1
                ctx.progress("critique", f"prompts done {finished}/{len(batch)}")
            results = [r for r in slots if r is not None]
    if stats is not None and ctx.arm == "loop":
        # judging runs inside the critique graph: split its time out
        seconds["judging"] = stats.seconds_forward - judged_before
        seconds["generation"] -= seconds["judging"]
    return {"results": results, "stage_seconds": seconds}
