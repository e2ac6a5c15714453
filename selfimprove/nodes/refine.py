"""refine: the reviser rewrites the response following the critique and revision requests."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.graph.state import CritiqueContext, CritiqueState
from selfimprove.nodes.common import failed_checks_text, trim_to_sentence, word_budget_tokens
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
    sampling = ctx.roles.reviser_sampling
    budget = word_budget_tokens(ctx.constitution, sampling.max_new_tokens)
    params = sampling.model_copy(update={"max_new_tokens": budget})
    ((out,),) = await ctx.roles.reviser.generate([conv], params)
    text = trim_to_sentence(out.text) if out.finish_reason == "length" else out.text
    # An empty revision would be worse than none: keep the current response then.
    revision = text or state["response"]
    record = RoundRecord(
        round=state.get("round", 0),
        response=state["response"],
        checks=state.get("checks", []),
        critique=crit,
        revision=revision,
    )
    return {
        "response": revision,
        "round": state.get("round", 0) + 1,
        "rounds": [record],
        "critique": None,
        "generated_tokens": out.num_tokens,
    }
