"""refine: the reviser rewrites the response following the critique and revision requests.

With ``reviser: repair`` the checks revise first: an extra sample that passes them as it is
replaces the response; else the failed checks' mechanical fixes (see :mod:`selfimprove.repair`)
are made to the response if it ended, or to the first extra sample they fix. The reviser model
is asked only when none of these passes.
"""

from __future__ import annotations

from collections.abc import Sequence

from langgraph.runtime import Runtime

from selfimprove.checks import Check, required_phrases, run_checks
from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.critique_loop.text import failed_checks_text, prompt_seed
from selfimprove.degeneration import repeats_itself, says_nothing_beyond
from selfimprove.prompts import user
from selfimprove.repair import repair_response
from selfimprove.types import Completion, RoundRecord, passes


async def refine(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    ctx = runtime.context
    crit = state["critique"]
    assert crit is not None, "refine runs only after critique"
    if ctx.reviser == "repair" and (repaired := _repaired(state, ctx.checks_for(state))):
        return repaired
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
    params = ctx.roles.reviser_sampling
    if ctx.revision_samples > 1:
        # Several revisions of the same critique, the checks pick (rejection sampling on the
        # revision step): a small reviser rarely gets every rule right on its first try.
        sampler = ctx.roles.sample_sampling
        params = params.model_copy(update={
            "n": ctx.revision_samples, "temperature": sampler.temperature, "top_p": sampler.top_p,
            "seed": prompt_seed(ctx.seed, state["prompt_id"], "revise", state.get("round", 0)),
        })
    (outs,) = await ctx.roles.reviser.generate([conv], params)
    out = best_revision(outs, ctx.checks_for(state))
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
        "generated_tokens": sum(o.num_tokens for o in outs),
    }


def best_revision(outs: Sequence[Completion], checks: Sequence[Check]) -> Completion:
    """The first revision that ended on its own and passes the hard checks; else the first
    that ended; else the first (the order is the sampler's, so ties keep it)."""
    ended = [o for o in outs if o.text.strip() and o.finish_reason == "stop"]
    clean = [o for o in ended if passes(run_checks(checks, o.text))]
    return (clean or ended or list(outs))[0]


def _response_ended(state: CritiqueState) -> bool:
    """Whether the current response ended on its own (not cut off at its token cap)."""
    rounds = state.get("rounds", [])
    if rounds:
        return not rounds[-1].revision_truncated
    return not state.get("response_truncated", False)


def _repaired(state: CritiqueState, checks: Sequence[Check]) -> CritiqueState | None:
    """The refine update that the checks alone make, or None when they cannot make one.

    In order: the first extra sample that passes as it is (samples all ended on their own);
    the current response, if it ended, with its failed checks fixed; the first sample whose
    failed checks can be fixed. A candidate that repeats itself is skipped (a fixed format
    would still teach the loop), and so is a result that says nothing beyond the words the
    prompt asked for ("The end." for "end with 'The end.'").
    """
    phrases = required_phrases(checks)

    def usable(text: str) -> bool:
        return not repeats_itself(text) and not says_nothing_beyond(text, phrases)

    samples = list(state.get("samples", []))
    current = [state["response"]] if _response_ended(state) else []
    found: tuple[str, tuple[str, ...], str, bool] | None = next(
        ((text, (), "sample", True) for text in samples
         if usable(text) and passes(run_checks(checks, text))), None)
    if found is None:
        for text, from_sample in [*((t, False) for t in current), *((s, True) for s in samples)]:
            fix = repair_response(checks, text)
            if fix is not None and fix.fixed and usable(fix.text):
                found = (fix.text, fix.fixed, "repair", from_sample)
                break
    if found is None:
        return None
    revision, fixed, reviser, from_sample = found
    record = RoundRecord(
        round=state.get("round", 0),
        response=state["response"],
        checks=state.get("checks", []),
        critique=state["critique"],
        revision=revision,
        reviser=reviser,  # type: ignore[arg-type]
        repaired_checks=list(fixed),
        from_sample=from_sample,
    )
    return {"response": revision, "round": state.get("round", 0) + 1, "rounds": [record],
            "critique": None}
