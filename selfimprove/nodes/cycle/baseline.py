"""baseline: evaluate the current policy (v0 on a new run) on the held-out prompts once."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.evaluate import PolicyEval, evaluate_policy
from selfimprove.graph.cycle_state import CycleContext, CycleState
from selfimprove.nodes.cycle.common import eval_path, read_json, write_json


async def incumbent_eval(ctx: CycleContext, version: str) -> PolicyEval:
    """The saved evaluation of ``version`` on the held-out prompts, made once and reused."""
    path = eval_path(ctx.run_dir, version)
    if (saved := read_json(path)) is not None:
        return PolicyEval.model_validate(saved)
    prompts = [p for _, p in ctx.heldout_prompts[: ctx.cfg.gate.num_prompts]]
    ctx.progress("evaluate", f"evaluating {version} on {len(prompts)} held-out prompts")
    result = await evaluate_policy(
        ctx.critique.roles.policy,
        ctx.registry.get(version),
        prompts,
        ctx.critique.constitution,
        ctx.cfg.gate.sampling,
    )
    write_json(path, result.model_dump(mode="json"))
    return result


async def baseline(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    version = ctx.registry.current_version()
    ev = await incumbent_eval(ctx, version)
    write_json(ctx.run_dir / "baseline.json", ev.model_dump(mode="json"))  # for the report
    ctx.progress(
        "baseline", f"{version}: violation rate {ev.violation_rate:.0%}, "
        f"{ev.mean_words:.0f} words on average"
    )
    return {"cycle": state.get("cycle", 0), "records": [], "pairs_since_train": 0}
