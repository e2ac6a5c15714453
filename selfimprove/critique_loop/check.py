"""check: run the constitution's and the prompt's executable checks on the current response."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.checks import run_checks
from selfimprove.critique_loop.state import CritiqueContext, CritiqueState


async def check(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    return {"checks": run_checks(runtime.context.checks_for(state), state["response"])}
