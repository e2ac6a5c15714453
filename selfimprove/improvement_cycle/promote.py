"""promote: promote the candidate if the gate passed, else reject it."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.gate import GateResult
from selfimprove.improvement_cycle.state import CycleContext, CycleState


async def promote_or_reject(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    candidate = state["candidate"]
    assert candidate is not None and state.get("evaluation") is not None
    result = GateResult.model_validate(state["evaluation"])
    # Both registry calls are idempotent, so a re-run after a crash is harmless.
    record = ctx.registry.record(candidate)
    if not record.evals:
        ctx.registry.record_eval(candidate, _metrics(result))
    if result.passed and record.status != "rejected":
        ctx.registry.promote(candidate)  # the next node that serves asks the registry
        ctx.progress("decide", f"promoted {candidate}")
        return {"decision": "promoted", "reasons": []}
    if record.status != "rejected":
        ctx.registry.mark_rejected(candidate, "; ".join(result.reasons) or "gate failed")
    ctx.progress("decide", f"rejected {candidate}: {'; '.join(result.reasons)}")
    return {"decision": "rejected", "reasons": result.reasons}


def _metrics(result: GateResult) -> dict:
    deg = result.candidate.degeneration
    return {
        "win_rate": result.win_rate,
        "win_rate_ci": list(result.win_rate_ci),
        "violation_rate": result.candidate.violation_rate,
        "incumbent_violation_rate": result.incumbent.violation_rate,
        "length_ratio": result.length_ratio,
        "retention_increase": result.retention_increase,
        "repetition_rate": deg.repetition_rate if deg else None,
        "truncation_rate": deg.truncation_rate if deg else None,
        "near_empty_rate": deg.near_empty_rate if deg else None,
        "passed": result.passed,
        "reasons": result.reasons,
    }
