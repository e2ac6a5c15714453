"""sample: pick this cycle's prompts from the training split (seeded, no held-out prompt)."""

from __future__ import annotations

import random

from langgraph.runtime import Runtime

from selfimprove.graph.cycle_state import CycleContext, CycleState


def cycle_batch(prompts: list[tuple[str, str]], size: int, cycle: int, seed: int):
    """Walk a seeded permutation of ``prompts`` so consecutive cycles see different prompts."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    start = (cycle * size) % len(order)
    return [order[(start + i) % len(order)] for i in range(min(size, len(order)))]


async def sample(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    c = state.get("cycle", 0)
    batch = cycle_batch(ctx.train_prompts, ctx.cfg.batch_size, c, ctx.cfg.seed)
    ctx.progress("sample", f"cycle {c + 1}/{ctx.cfg.cycles}: {len(batch)} prompts")
    return {
        "batch": [list(p) for p in batch],
        "stage_seconds": {},
        "candidate": None,
        "train_metrics": {},
        "evaluation": None,
        "decision": "skipped",
        "reasons": [],
    }
