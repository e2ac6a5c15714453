"""judge: first response vs final revision in both orders; best-of-N samples scored pointwise."""

from __future__ import annotations

import asyncio

from langgraph.runtime import Runtime

from selfimprove.checks import passes, run_checks
from selfimprove.critique_loop.state import CritiqueContext, CritiqueState


async def judge(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    ctx = runtime.context
    update: CritiqueState = {"verdict": None}
    tasks = []
    if state.get("rounds"):
        # The first round checked the first response already; no need to run the checks again.
        first_ok = passes(state["rounds"][0].checks)
        final_ok = passes(state.get("checks", []))
        tasks.append(
            ctx.pairwise_judge().compare(
                state["prompt"], state["first_response"], state["response"],
                a_passes=first_ok, b_passes=final_ok, labels=("original", "revision"),
            )
        )
    samples = state.get("samples") or []
    pointwise = ctx.pointwise_judge() if samples and ctx.score_samples else None
    if pointwise is not None:
        tasks += [pointwise.score(state["prompt"], s) for s in samples]
    results = await asyncio.gather(*tasks)
    if state.get("rounds"):
        update["verdict"], results = results[0], results[1:]
    if samples:
        update["sample_scores"] = list(results) if results else [None] * len(samples)
        update["sample_checks_passed"] = [
            passes(run_checks(ctx.checks_for(state), s)) for s in samples
        ]
    return update
