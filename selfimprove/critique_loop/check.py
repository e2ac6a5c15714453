"""check: run the constitution's and the prompt's executable checks on the current response."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.checks import run_checks
from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.types import CheckResult

#: the check every first answer gets: one cut off at its token cap has not answered yet
ENDED = "ended"


async def check(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    results = run_checks(runtime.context.checks_for(state), state["response"])
    if state.get("round", 0) == 0 and state.get("response_truncated"):
        # Passing the rules by stopping mid-sentence is no pass: revise it like a failure.
        results.append(CheckResult(check_id=ENDED, kind=ENDED, passed=False, detail=(
            "the answer was cut off at its token limit before it ended; give a complete "
            "answer that fits")))
    return {"checks": results}
