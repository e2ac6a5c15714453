"""sample: pick this cycle's prompts from the training split (seeded, no held-out prompt),
optionally adding new prompts written by the policy itself (deduplicated)."""

from __future__ import annotations

import random
import re

from langgraph.runtime import Runtime

from selfimprove.hashing import prompt_id
from selfimprove.improvement_cycle.state import CycleContext, CycleState
from selfimprove.prompts import user
from selfimprove.sources import PromptRecord
from selfimprove.types import SamplingParams


def cycle_batch(prompts: list[PromptRecord], size: int, cycle: int, seed: int):
    """Walk a seeded permutation of ``prompts`` so consecutive cycles see different prompts."""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    start = (cycle * size) % len(order)
    return [order[(start + i) % len(order)] for i in range(min(size, len(order)))]


def _normalized(text: str) -> str:
    return re.sub(r"\W+", " ", text).strip().lower()


async def self_generated(ctx: CycleContext, cycle: int, known: set[str]) -> list[PromptRecord]:
    """New prompts from the policy: seeded samples, one question each, deduplicated against
    every known prompt (held-out ones included) and each other; held-out hashes are dropped."""
    n = ctx.cfg.prompts.self_generated
    params = SamplingParams(max_new_tokens=48, temperature=1.0, top_p=0.95, n=n,
                            seed=ctx.cfg.seed * 1000 + cycle)
    writer = ctx.critique_for(ctx.registry.current()).roles.policy
    (samples,) = await writer.generate([user("self_prompt")], params)
    out: list[PromptRecord] = []
    for sample in samples:
        text = sample.text.strip().strip('"').splitlines()[0].strip() if sample.text else ""
        key = _normalized(text)
        if len(key) < 10 or not text.endswith("?") or key in known:
            continue
        if ctx.store.is_heldout(text):  # the store would refuse it for training
            continue
        known.add(key)
        out.append(PromptRecord(id=f"self-{prompt_id(text)}", prompt=text))
    return out


def pending_traffic(ctx: CycleContext, limit: int) -> list[PromptRecord]:
    """Up to ``limit`` recorded exchanges no critique has covered, outside the held-out split
    (the store refuses those for training), oldest first. What a server left in the journal
    (killed, or still running) is moved into the store first."""
    from selfimprove.traffic import TrafficLog, move_journal

    move_journal(ctx.run.path, ctx.cfg.harvest)
    out = []
    for exchange in TrafficLog(ctx.run.path).pending(ctx.store.harvested_prompt_ids()):
        record = exchange.prompt_record()
        if not ctx.store.is_heldout(record.prompt):
            out.append(record)
        if len(out) == limit:
            break
    return out


async def sample(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    c = state.get("cycle", 0)
    batch = cycle_batch(ctx.train_prompts, ctx.cfg.batch_size, c, ctx.cfg.seed)
    note = ""
    if ctx.cfg.prompts.self_generated:
        known = {_normalized(r.prompt) for r in ctx.train_prompts + ctx.heldout_prompts}
        extra = await self_generated(ctx, c, known)
        batch += extra
        note = f" (+{len(extra)} written by the policy)"
    if ctx.cfg.prompts.traffic and ctx.arm == "loop":
        # The control arm answers the prompt file only: it has no served answers to revise.
        extra = pending_traffic(ctx, ctx.cfg.prompts.traffic)
        batch += extra
        note += f" (+{len(extra)} recorded exchanges)"
    ctx.progress("sample", f"cycle {c + 1}/{ctx.cfg.cycles}: {len(batch)} prompts{note}")
    return {
        "batch": [r.model_dump(mode="json") for r in batch],
        "stage_seconds": {},
        "candidate": None,
        "train_metrics": {},
        "evaluation": None,
        "decision": "skipped",
        "reasons": [],
    }
