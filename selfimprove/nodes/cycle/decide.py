"""decide: promote the candidate if the gate passed, else reject it; the backend follows."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.evaluate import EvalResult
from selfimprove.graph.cycle_state import CycleContext, CycleState


async def decide(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    candidate = state["candidate"]
    assert candidate is not None and state.get("evaluation") is not None
    result = EvalResult.model_validate(state["evaluation"])
    # Both registry calls are idempotent, so a re-run after a crash is harmless.
    record = ctx.registry.record(candidate)
    if not record.evals:
        ctx.registry.record_eval(candidate, _metrics(result))
    if result.passed and record.status != "rejected":
        ref = ctx.registry.promote(candidate)
        await ctx.critique.roles.policy.load_policy(ref)
        ctx.progress("decide", f"promoted {candidate}")
        return {"decision": "promoted", "reasons": []}
    if record.status != "rejected":
        ctx.registry.mark_rejected(candidate, "; ".join(result.reasons) or "gate failed")
    ctx.progress("decide", f"rejected {candidate}: {'; '.join(result.reasons)}")
    return {"decision": "rejected", "reasons": result.reasons}


def _metrics(result: EvalResult) -> dict:
    return {
        "win_rate": result.win_rate,
        "win_rate_ci": list(result.win_rate_ci),
        "violation_rate": result.candidate.violation_rate,
        "incumbent_violation_rate": result.incumbent.violation_rate,
        "length_ratio": result.length_ratio,
        "retention_increase": result.retention_increase,
        "passed": result.passed,
        "reasons": result.reasons,
    }
