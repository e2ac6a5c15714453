"""harvest: turn the cycle's critique results into store rows (one idempotent shard id)."""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.harvest import harvest as harvest_results
from selfimprove.improvement_cycle.state import CycleContext, CycleState
from selfimprove.types import CritiqueResult


def shard_id(cycle: int) -> str:
    return f"cycle-{cycle + 1:04d}"


async def harvest(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    c = state["cycle"]
    results = [CritiqueResult.model_validate(r) for r in state.get("results", [])]
    out = harvest_results(results, ctx.cfg.harvest, cycle=c + 1)
    # A re-run after a crash finds the shard id already written and writes nothing.
    res = ctx.store.append(out.pairs, out.sft, shard_id(c), dropped=out.dropped,
                           prompt_ids=[r.prompt_id for r in results])
    log = {e["shard_id"]: e for e in ctx.store.harvest_log()}.get(shard_id(c), {})
    pairs = log.get("pairs_written", res.pairs_written)
    sft = log.get("sft_written", res.sft_written)
    ctx.progress("harvest", f"pairs harvested {pairs}, SFT rows {sft}")
    return {
        "results": [],
        "harvested": {
            "prompts": len(results),
            "pairs": pairs,
            "sft": sft,
            "dropped": dict(log.get("dropped", out.dropped)),
            "kept": out.kept,
        },
        "pairs_since_train": state.get("pairs_since_train", 0) + pairs,
    }


def route_after_harvest(state: CycleState, runtime: Runtime[CycleContext]) -> str:
    """Train every ``every_cycles`` cycles, or once enough new pairs have arrived."""
    schedule = runtime.context.cfg.schedule
    due = (state["cycle"] + 1) % schedule.every_cycles == 0
    enough = state.get("pairs_since_train", 0) >= schedule.min_new_pairs
    return "train" if due or enough else "record"
