"""gate: the candidate against the incumbent on held-out prompts (saved, so never redone)."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.backends.served import serve
from selfimprove.gate import gate
from selfimprove.improvement_cycle.baseline import version_eval
from selfimprove.improvement_cycle.state import CycleContext, CycleState
from selfimprove.improvement_cycle.timing import timed
from selfimprove.paired import paired_or_none
from selfimprove.types import PolicyRef


def judge_version(ctx: CycleContext, incumbent: PolicyRef) -> PolicyRef:
    """Who judges when the judge shares the policy's backend: the base (v0) by default, so
    the yardstick does not move with the candidate."""
    return ctx.registry.get("v0") if ctx.cfg.gate.judge_version == "base" else incumbent


async def gate_candidate(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    seconds = dict(state.get("stage_seconds", {}))
    candidate = state["candidate"]
    assert candidate is not None
    with timed(seconds, "evaluation"):
        result = ctx.run.load_gate(candidate)
        if result is None:
            incumbent = ctx.registry.current()
            inc_eval = await version_eval(ctx, incumbent.version)
            roles = ctx.critique.roles
            judge_backend = roles.judge
            if roles.shares_policy_backend(judge_backend):  # type: ignore[arg-type]
                judge_backend = serve(roles.policy, judge_version(ctx, incumbent))
            ctx.progress("evaluate", f"{candidate} vs {incumbent.version}")
            result = await gate(
                roles.policy,
                ctx.registry.get(candidate),
                incumbent,
                ctx.eval_prompts,
                ctx.critique.constitution,
                ctx.cfg.gate,
                judge=ctx.critique.pairwise_judge(judge_backend),
                incumbent_eval=inc_eval,
                baseline_eval=ctx.run.baseline(),
            )
            ctx.run.save_gate(candidate, result)
            # The candidate's own evaluation is the incumbent's if it is promoted.
            ctx.run.save_eval(result.candidate)
    wr = "n/a" if result.win_rate is None else f"{result.win_rate:.2f}"
    pairs = paired_or_none(result.incumbent, result.candidate)
    paired = f"; passes every check: {pairs.summary()}" if pairs else ""
    ctx.progress(
        "evaluate",
        f"win rate {wr} [{result.win_rate_ci[0]:.2f}, {result.win_rate_ci[1]:.2f}], violations "
        f"{result.incumbent.violation_rate:.0%} → {result.candidate.violation_rate:.0%}{paired}",
    )
    return {"evaluation": result.model_dump(mode="json"), "stage_seconds": seconds}
