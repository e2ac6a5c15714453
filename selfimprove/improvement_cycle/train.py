"""train: fit the next candidate (DPO and/or SFT, LoRA) on the store; never twice per cycle."""

from __future__ import annotations

import asyncio

from langgraph.runtime import Runtime

from selfimprove.improvement_cycle.state import CycleContext, CycleState
from selfimprove.improvement_cycle.timing import timed
from selfimprove.registry import DataUsed
from selfimprove.types import PolicyRef


def _train_one(ctx: CycleContext, cycle: int, method: str, parent: PolicyRef) -> tuple[str, dict]:
    from selfimprove.training.policy import train_policy

    dataset, shards = ctx.store.training_data(method)
    used = [DataUsed(name=s.name, rows=s.rows, kind=s.kind) for s in shards]
    ref, result = train_policy(
        ctx.registry, dataset, ctx.cfg.train_config(method), data=used, parent=parent.version,
        progress=False, cycle=cycle, trainer=ctx.trainer,
    )
    return ref.version, dict(result.metrics)


async def train(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    c = state["cycle"] + 1
    seconds = dict(state.get("stage_seconds", {}))
    parent = ctx.registry.current()
    metrics: dict = {}
    with timed(seconds, "training"):
        for method in ctx.cfg.schedule.methods:
            rows = len(ctx.store.training_data(method)[0])
            if rows == 0:
                ctx.progress("train", f"no {method.upper()} rows yet: skipped")
                continue
            version = ctx.registry.trained_in(c, method)
            if version is None:
                ctx.progress("train", f"{method.upper()} on {rows} rows from {parent.version}")
                version, m = await asyncio.to_thread(_train_one, ctx, c, method, parent)
            else:
                m = dict(ctx.registry.record(version).metrics)
                ctx.progress("train", f"{version} was already trained in this cycle: reused")
            metrics |= {f"{method}/{k}": v for k, v in m.items()}
            metrics[f"{method}/version"] = version
            parent = ctx.registry.get(version)
    if parent.version == ctx.registry.current_version():
        return {"candidate": None, "stage_seconds": seconds, "decision": "skipped",
                "reasons": ["no training data yet"]}
    steps = metrics.get("dpo/steps", metrics.get("sft/steps"))
    ctx.progress("train", f"candidate {parent.version} ({steps} training steps)")
    return {"candidate": parent.version, "train_metrics": metrics, "stage_seconds": seconds,
            "pairs_since_train": 0}


def route_after_train(state: CycleState) -> str:
    return "gate" if state.get("candidate") else "record"
