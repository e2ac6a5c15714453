"""``selfimprove critique``: run the critique loop over prompts and show every step."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from selfimprove.config import CritiqueConfig, load_config
from selfimprove.hashing import prompt_id
from selfimprove.types import CritiqueResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("critique", help="run generate → critique → refine → judge over prompts")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--prompts", type=Path, help="a .jsonl file (one {\"prompt\": ...} a line)")
    p.add_argument("--config", type=Path, help="YAML with critique settings (CritiqueConfig)")
    p.add_argument("--constitution", help="constitution name or path (key: constitution)")
    p.add_argument("--model", help="policy model: HF id, local dir or smollm2-135m-instruct")
    p.add_argument("--max-rounds", type=int, help="critique/revision rounds (key: max_rounds)")
    p.add_argument("--num-samples", type=int, help="extra samples for best-of-N (num_samples)")
    p.add_argument("--seed", type=int, help="seed (key: seed)")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--json", action="store_true", help="print one JSON result per line")
    p.add_argument("--store", type=Path, help="harvest pairs into this run directory's store")
    p.set_defaults(func=run_critique)


def config_from_args(args: argparse.Namespace) -> CritiqueConfig:
    cfg = load_config(args.config, CritiqueConfig) if args.config else CritiqueConfig()
    update = {
        "constitution": args.constitution,
        "max_rounds": args.max_rounds,
        "num_samples": args.num_samples,
        "seed": args.seed,
    }
    cfg = cfg.model_copy(update={k: v for k, v in update.items() if v is not None})
    if args.model:
        backend = cfg.roles.policy.backend.model_copy(update={"model": args.model})
        policy = cfg.roles.policy.model_copy(update={"backend": backend})
        cfg = cfg.model_copy(update={"roles": cfg.roles.model_copy(update={"policy": policy})})
    return CritiqueConfig.model_validate(cfg.model_dump())


def run_critique(args: argparse.Namespace) -> int:
    from selfimprove.sources import load_prompts

    cfg = config_from_args(args)
    prompts = (
        load_prompts(args.prompts)
        if args.prompts
        else [(prompt_id(p), p) for p in args.prompt]
    )
    if args.limit:
        prompts = prompts[: args.limit]
    results = asyncio.run(_run(cfg, prompts, as_json=args.json))
    if args.store:
        harvest_into_store(results, args.store, out=sys.stderr if args.json else sys.stdout)
    return 0


def harvest_into_store(results: list[CritiqueResult], run_dir: Path, out) -> None:
    """Harvest pairs and SFT rows into the run's store; held-out prompts are left out."""
    import uuid
    from datetime import datetime, timezone

    from selfimprove.config import HarvestConfig
    from selfimprove.harvest import harvest
    from selfimprove.store import PreferenceStore

    store = PreferenceStore(run_dir)
    train = [r for r in results if not store.is_heldout(r.prompt)]
    harvested = harvest(train, HarvestConfig(strategies=["revision", "best_of_n"]))
    if held := len(results) - len(train):
        harvested.dropped["heldout_prompt"] = held
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    shard_id = f"critique-{stamp}-{uuid.uuid4().hex[:6]}"
    res = store.append(harvested.pairs, harvested.sft, shard_id, dropped=harvested.dropped)
    drops = ", ".join(f"{k}: {v}" for k, v in sorted(harvested.dropped.items())) or "none"
    print(
        f"store {run_dir}: +{res.pairs_written} pairs, +{res.sft_written} SFT rows "
        f"({res.duplicate_pairs + res.duplicate_sft} duplicates skipped; dropped: {drops})",
        file=out,
    )


async def _run(cfg: CritiqueConfig, prompts, *, as_json: bool) -> list[CritiqueResult]:
    from selfimprove.critique_loop.graph import iter_critiques
    from selfimprove.render import print_result
    from selfimprove.wiring import make_context

    ctx = make_context(cfg)
    out: list[CritiqueResult | None] = [None] * len(prompts)
    try:
        async for i, result in iter_critiques(prompts, ctx, cfg.max_concurrency):
            out[i] = result
            if as_json:
                print(result.model_dump_json(), flush=True)
            else:
                print_result(result)
    finally:
        await ctx.roles.aclose()
    return [r for r in out if r is not None]
