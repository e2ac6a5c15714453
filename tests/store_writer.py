"""Append deterministic shards to a preference store until killed (the crash test runs this).

Usage: ``python store_writer.py ROOT COUNT``. Shard ``i`` has id ``w{i:05d}`` and always the
same rows, so a restarted writer re-appends from 0 and relies on per-shard idempotency.
"""

from __future__ import annotations

import sys
from typing import Any

import pyarrow as pa

from selfimprove.store import PreferenceStore, content_hash, pair_schema

PAIRS_PER_SHARD = 4
SFT_PER_SHARD = 3
# Long enough that much of the writer's time is spent inside a shard write.
_FILLER = " ".join(f"w{k}" for k in range(1500))


def _provenance(shard: int, j: int) -> dict[str, Any]:
    return {
        "strategy": "revision",
        "prompt_id": f"w{shard:05d}-{j}",
        "constitution": "crash",
        "constitution_hash": "0" * 64,
        "principle_ids": [f"principle-{j % 3}"],
        "check_results": "{}",
        "p_b_order1": 0.8,
        "p_b_order2": None,
        "margin": 0.6,
        "critiques": ["shorter please"],
        "policy_version": "v0",
        "source": "loop",
        "cycle": shard % 3,
        "created_at": "2025-01-01T00:00:00+00:00",
    }


def prompt_text(shard: int, j: int) -> str:
    return f"prompt {shard}-{j}"


def pair_row(shard: int, j: int) -> dict[str, Any]:
    row = {
        "prompt": [{"role": "user", "content": prompt_text(shard, j)}],
        "chosen": [{"role": "assistant", "content": f"good {shard}-{j} {_FILLER}"}],
        "rejected": [{"role": "assistant", "content": f"bad {shard}-{j} {_FILLER}"}],
        **_provenance(shard, j),
        "decided_by": "judge",
    }
    row["content_hash"] = content_hash(row)
    return row


def sft_row(shard: int, j: int) -> dict[str, Any]:
    row = {
        "messages": [
            {"role": "user", "content": prompt_text(shard, j)},
            {"role": "assistant", "content": f"good {shard}-{j} {_FILLER}"},
        ],
        **_provenance(shard, j),
    }
    row["content_hash"] = content_hash(row)
    return row


def shard_rows(shard: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pairs = [pair_row(shard, j) for j in range(PAIRS_PER_SHARD)]
    sft = [sft_row(shard, j) for j in range(SFT_PER_SHARD)]
    return pairs, sft


def main(argv: list[str]) -> int:
    root, count = argv[0], int(argv[1])
    store = PreferenceStore(root)
    # Pay pyarrow's one-off import costs (it pulls in pandas on first use) before "ready",
    # so the test's kill delays fall on appends.
    pa.Table.from_pylist([], schema=pair_schema())
    print("ready", flush=True)
    for shard in range(count):
        pairs, sft = shard_rows(shard)
        store.append(pairs, sft, f"w{shard:05d}", dropped={"tie": 1})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
