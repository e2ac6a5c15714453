"""record: save the cycle's record, rewrite the report, and move on to the next cycle."""

from __future__ import annotations

from langgraph.graph import END
from langgraph.runtime import Runtime

from selfimprove.improvement_cycle.state import CycleContext, CycleState
from selfimprove.rundir import CycleRecord


def cycle_record(state: CycleState, ctx: CycleContext) -> CycleRecord:
    harvested = state.get("harvested", {})
    metrics = state.get("train_metrics", {})
    methods = [m for m in ctx.cfg.schedule.methods if f"{m}/version" in metrics]
    return CycleRecord(
        cycle=state["cycle"] + 1,
        prompts=harvested.get("prompts", 0),
        pairs_kept=harvested.get("pairs", 0),
        sft_rows=harvested.get("sft", 0),
        dropped=harvested.get("dropped", {}),
        kept=harvested.get("kept", {}),
        trained=bool(state.get("candidate")),
        train_method="+".join(methods) or None,
        train_metrics=_flat_metrics(metrics),
        candidate=state.get("candidate"),
        eval=state.get("evaluation"),  # type: ignore[arg-type]
        decision=state.get("decision", "skipped"),  # type: ignore[arg-type]
        reasons=state.get("reasons", []),
        current=ctx.registry.current_version(),
        stage_seconds=state.get("stage_seconds", {}),
    )


def _flat_metrics(metrics: dict) -> dict:
    """Report the last method's numbers under plain keys (``train_loss``, margins, …)."""
    out: dict = {}
    for key, value in metrics.items():
        if "/" in key and isinstance(value, int | float):
            out[key.split("/", 1)[1]] = value
    return out


async def record(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    from selfimprove.report import write_report

    ctx = runtime.context
    rec = cycle_record(state, ctx)
    ctx.run.save_cycle(rec)  # same content if re-run
    records = [*state.get("records", []), rec.model_dump(mode="json")]
    write_report(ctx.run, records)
    ctx.progress("record", f"cycle {rec.cycle} {rec.decision}; current {rec.current}")
    nxt = state["cycle"] + 1
    return {"cycle": nxt, "records": [rec.model_dump(mode="json")], "done": nxt >= ctx.cfg.cycles}


def route_after_record(state: CycleState) -> str:
    return END if state.get("done") else "sample"
