"""``selfimprove data``: inspect and export a run's preference store.

Store errors (:class:`~selfimprove.errors.StoreError`) propagate to the CLI's entry point,
which prints them and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command (``stats``, ``export``) to the CLI."""
    data = subparsers.add_parser("data", help="inspect or export a run's preference data")
    sub = data.add_subparsers(dest="data_command", required=True)

    stats = sub.add_parser("stats", help="counts of pairs, SFT rows, principles and drops")
    stats.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    stats.add_argument("--json", action="store_true", help="print the counts as JSON")
    stats.set_defaults(func=_stats)

    export = sub.add_parser("export", help="write a datasets-loadable copy of the store")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("--to", type=Path, required=True, metavar="DIR")
    export.add_argument("--push-to-hub", metavar="REPO", help="also push to a hub dataset repo")
    export.set_defaults(func=_export)


def _open(run_dir: Path):
    from selfimprove.store import PreferenceStore

    return PreferenceStore(run_dir, readonly=True)


def _stats(args: argparse.Namespace) -> int:
    stats = _open(args.run_dir).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        _print_stats(stats)
    return 0


def _print_stats(stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from selfimprove.traffic import TRAFFIC_CYCLE

    console = Console()
    summary = Table(title="preference store", show_header=False)
    summary.add_row("pairs", str(stats["pairs"]))
    summary.add_row("sft rows", str(stats["sft"]))
    summary.add_row("shards", str(stats["shards"]))
    summary.add_row("duplicates skipped", str(stats["duplicates"]))
    summary.add_row("held-out fraction", f"{stats['heldout_fraction']:g}")
    console.print(summary)
    sections = [
        ("per strategy", "strategy", stats["by_strategy"]),
        ("per principle", "principle", stats["by_principle"]),
        ("harvest drops", "reason", stats["dropped"]),
    ]
    for title, key, counts in sections:
        table = Table(title=title)
        table.add_column(key)
        table.add_column("count", justify="right")
        for name, count in counts.items():
            table.add_row(str(name), str(count))
        console.print(table)
    cycles = Table(title="per cycle")
    for column in ("cycle", "pairs", "sft"):
        cycles.add_column(column, justify="right")
    for cycle, counts in stats["by_cycle"].items():
        # Rows harvested from agent traffic were recorded outside any cycle.
        name = "traffic" if cycle == TRAFFIC_CYCLE else str(cycle)
        cycles.add_row(name, str(counts["pairs"]), str(counts["sft"]))
    console.print(cycles)


def _export(args: argparse.Namespace) -> int:
    store = _open(args.run_dir)
    out = store.export(args.to)
    print(f"exported to {out} (pairs.parquet, sft.parquet, README.md)")
    if args.push_to_hub:
        store.push_to_hub(args.push_to_hub)
        print(f"pushed to the hub dataset {args.push_to_hub}")
    return 0
