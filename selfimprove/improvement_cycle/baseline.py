"""baseline: evaluate the current policy (v0 on a new run) on the held-out prompts once."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.evaluation import PolicyEval, evaluate_policy
from selfimprove.improvement_cycle.state import CycleContext, CycleState


async def version_eval(ctx: CycleContext, version: str) -> PolicyEval:
    """The saved evaluation of ``version`` on the held-out prompts, made once and reused."""
    if (saved := ctx.run.load_eval(version)) is not None:
        return saved
    prompts = ctx.eval_prompts
    ctx.progress("evaluate", f"evaluating {version} on {len(prompts)} held-out prompts")
    result = await evaluate_policy(
        ctx.critique.roles.policy,
        ctx.registry.get(version),
        prompts,
        ctx.critique.constitution,
        ctx.cfg.gate.sampling,
    )
    ctx.run.save_eval(result)
    return result


async def baseline(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    version = ctx.registry.current_version()
    ev = await version_eval(ctx, version)
    deg = ev.degeneration
    extra = (f", repetition {deg.repetition_rate:.0%}, truncated {deg.truncation_rate or 0:.0%}"
             if deg else "")
    ctx.progress(
        "baseline", f"{version}: violation rate {ev.violation_rate:.0%}, "
        f"{ev.mean_words:.0f} words on average{extra}"
    )
    return {"cycle": state.get("cycle", 0), "records": [], "pairs_since_train": 0}
