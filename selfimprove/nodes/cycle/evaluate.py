"""evaluate: the gate, candidate vs incumbent on held-out prompts (saved, so never redone)."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.evaluate import EvalResult, gate
from selfimprove.graph.cycle_state import CycleContext, CycleState
from selfimprove.nodes.cycle.baseline import incumbent_eval
from selfimprove.nodes.cycle.common import eval_path, read_json, timed, write_json


async def evaluate(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    seconds = dict(state.get("stage_seconds", {}))
    candidate = state["candidate"]
    assert candidate is not None
    path = eval_path(ctx.run_dir, f"{candidate}-gate")
    saved = read_json(path)
    with timed(seconds, "evaluation"):
        if saved is not None:
            result = EvalResult.model_validate(saved)
        else:
            incumbent = ctx.registry.current()
            inc_eval = await incumbent_eval(ctx, incumbent.version)
            ctx.progress("evaluate", f"{candidate} vs {incumbent.version}")
            result = await gate(
                ctx.critique.roles.policy,
                ctx.registry.get(candidate),
                incumbent,
                inc_eval.prompts,
                ctx.critique.constitution,
                ctx.cfg.gate,
                judge_backend=None
                if ctx.critique.roles.judge is ctx.critique.roles.policy
                else ctx.critique.roles.judge,
                base=ctx.registry.get("v0"),
                incumbent_eval=inc_eval,
            )
            write_json(path, result.model_dump(mode="json"))
            # The candidate's own evaluation is the incumbent's if it is promoted.
            write_json(eval_path(ctx.run_dir, candidate), result.candidate.model_dump(mode="json"))
    wr = "n/a" if result.win_rate is None else f"{result.win_rate:.2f}"
    ctx.progress(
        "evaluate",
        f"win rate {wr} [{result.win_rate_ci[0]:.2f}, {result.win_rate_ci[1]:.2f}], violations "
        f"{result.incumbent.violation_rate:.0%} → {result.candidate.violation_rate:.0%}",
    )
    return {"evaluation": result.model_dump(mode="json"), "stage_seconds": seconds}
