"""refine: the reviser rewrites the response following the critique and revision requests."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.critique_loop.text import failed_checks_text
from selfimprove.prompts import user
from selfimprove.types import RoundRecord


async def refine(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    ctx = runtime.context
    crit = state["critique"]
    assert crit is not None, "refine runs only after critique"
    by_id = {p.id: p for p in ctx.constitution.principles}
    conv = user(
        "revise",
        prompt=state["prompt"],
        response=state["response"],
        critique=crit.text,
        failed_checks=failed_checks_text(state.get("checks", [])),
        requests=" ".join(by_id[i].revision for i in crit.principle_ids),
    )
    # The reviser gets its full budget and the checks judge the result: capping the budget at
    # a length limit would make every revision pass by truncation, whatever the critique said.
    ((out,),) = await ctx.roles.reviser.generate([conv], ctx.roles.reviser_sampling)
    # An empty revision would be worse than none: keep the current response then.
    revision = out.text or state["response"]
    record = RoundRecord(
        round=state.get("round", 0),
        response=state["response"],
        checks=state.get("checks", []),
        critique=crit,
        revision=revision,
        revision_truncated=bool(out.text) and out.finish_reason == "length",
    )
    return {
        "response": revision,
        "round": state.get("round", 0) + 1,
        "rounds": [record],
        "critique": None,
        "generated_tokens": out.num_tokens,
    }
