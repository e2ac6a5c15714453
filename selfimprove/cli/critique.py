"""``selfimprove critique``: run the critique loop over prompts and show every step."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from selfimprove.config import CritiqueConfig, load_config, validate_overrides
from selfimprove.errors import ConfigError
from selfimprove.hashing import prompt_id
from selfimprove.types import CritiqueResult

if TYPE_CHECKING:
    from selfimprove.sources import PromptRecord


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
    data = cfg.model_dump()
    data.update({k: v for k, v in update.items() if v is not None})
    if args.model:
        data["roles"]["policy"]["backend"]["model"] = args.model
    return validate_overrides(CritiqueConfig, data, FLAGS)


#: config keys set by flags, so an invalid value names the flag
FLAGS = {"max_rounds": "--max-rounds", "num_samples": "--num-samples", "seed": "--seed",
         "constitution": "--constitution"}


def run_critique(args: argparse.Namespace) -> int:
    from selfimprove.constitution import load_constitution
    from selfimprove.sources import PromptRecord, load_prompt_records

    cfg = config_from_args(args)
    empty = [i for i, text in enumerate(args.prompt or [], start=1) if not text.strip()]
    if empty:
        raise ConfigError("--prompt", f"prompt {empty[0]} is empty")
    # Whole records: a file's prompt checks, conversations and given answers go through the
    # loop (and into the store) as they do in a run.
    prompts = (
        load_prompt_records(args.prompts, constitution=load_constitution(cfg.constitution))
        if args.prompts
        else [PromptRecord(id=prompt_id(p), prompt=p) for p in args.prompt]
    )
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError("--limit", f"must be at least 1, got {args.limit}")
        prompts = prompts[: args.limit]
    out = sys.stderr if args.json else sys.stdout
    harvester = StoreHarvester(args.store, out) if args.store else None
    if harvester is not None:
        prompts = harvester.to_do(prompts)
    asyncio.run(_run(cfg, prompts, as_json=args.json, harvester=harvester))
    if harvester is not None:
        harvester.close()
    return 0


class StoreHarvester:
    """Harvests finished critiques into a run's store as they come, a chunk at a time.

    Each chunk is one idempotent append whose shard id comes from its prompts, so a harvest
    that is killed and run again skips every prompt already stored and redoes only the chunk
    that was in flight. Held-out prompts are never critiqued for the store.
    """

    CHUNK = 16

    def __init__(self, run_dir: Path, out) -> None:
        from selfimprove.store import PreferenceStore

        self.store = PreferenceStore(run_dir)
        self.run_dir = run_dir
        self.out = out
        self.pending: list[CritiqueResult] = []
        self.totals = {"pairs": 0, "sft": 0, "duplicates": 0}
        self.dropped: dict[str, int] = {}

    def to_do(self, prompts: list[PromptRecord]) -> list[PromptRecord]:
        done = self.store.harvested_prompt_ids()
        held = [p for p in prompts if self.store.is_heldout(p.prompt)]
        todo = [p for p in prompts if p.id not in done and not self.store.is_heldout(p.prompt)]
        skipped = len(prompts) - len(todo) - len(held)
        if held or skipped:
            print(f"store {self.run_dir}: {len(held)} held-out prompts left out, {skipped} "
                  "already harvested", file=self.out)
        return todo

    def add(self, result: CritiqueResult) -> None:
        self.pending.append(result)
        if len(self.pending) >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        import hashlib

        from selfimprove.config import HarvestConfig
        from selfimprove.harvest import harvest

        if not self.pending:
            return
        ids = sorted(r.prompt_id for r in self.pending)
        shard_id = "critique-" + hashlib.sha256("\0".join(ids).encode()).hexdigest()[:16]
        harvested = harvest(self.pending, HarvestConfig(strategies=["revision", "best_of_n"]))
        res = self.store.append(harvested.pairs, harvested.sft, shard_id,
                                dropped=harvested.dropped, prompt_ids=ids)
        self.totals["pairs"] += res.pairs_written
        self.totals["sft"] += res.sft_written
        self.totals["duplicates"] += res.duplicate_pairs + res.duplicate_sft
        for k, v in harvested.dropped.items():
            self.dropped[k] = self.dropped.get(k, 0) + v
        self.pending = []

    def close(self) -> None:
        self.flush()
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        print(
            f"store {self.run_dir}: +{self.totals['pairs']} pairs, +{self.totals['sft']} SFT rows "
            f"({self.totals['duplicates']} duplicates skipped; dropped: {drops})",
            file=self.out,
        )


async def _run(
    cfg: CritiqueConfig, prompts, *, as_json: bool, harvester: StoreHarvester | None = None
) -> None:
    from selfimprove.critique_loop.graph import iter_critiques
    from selfimprove.render import print_result
    from selfimprove.wiring import make_context

    if not prompts:
        return
    ctx = make_context(cfg)
    try:
        async for _, result in iter_critiques(prompts, ctx, cfg.max_concurrency):
            if as_json:
                print(result.model_dump_json(), flush=True)
            else:
                print_result(result)
            if harvester is not None:
                harvester.add(result)  # appended a chunk at a time, as prompts finish
    finally:
        await ctx.roles.aclose()
