"""``selfimprove policies RUN_DIR``: the run's policy versions, their lineage and results."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

# Metrics worth a column, with their headers (training records more; --json shows all).
KEY_METRICS = (
    ("final_loss", "loss"),
    ("rewards_margins", "margin"),
    ("rewards_accuracies", "acc"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``policies`` command to the CLI."""
    p = subparsers.add_parser("policies", help="list a run's policy versions and which is current")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument(
        "--promote", metavar="VERSION", default=None,
        help="make VERSION the current one (a rollback, or a repair of a lost current.json); "
        "a rejected version cannot be",
    )
    p.set_defaults(func=run_policies)


def run_policies(args: argparse.Namespace) -> int:
    from selfimprove.errors import PolicyError
    from selfimprove.registry import POLICIES, PolicyRegistry

    if not (args.run_dir / POLICIES).is_dir():
        raise PolicyError(f"no policies in {args.run_dir} (no {POLICIES}/ directory)")
    registry = PolicyRegistry(args.run_dir)
    if args.promote is not None:
        registry.promote(args.promote)
        # with --json, stdout is the JSON alone
        print(f"current: {args.promote}", file=sys.stderr if args.json else sys.stdout)
    records = registry.versions()
    try:
        current = registry.current_version()
    except PolicyError as exc:
        current = None
        problem = str(exc)
    else:
        problem = None
    if args.json:
        out = {"current": current, "versions": [r.model_dump(mode="json") for r in records]}
        print(json.dumps(out, indent=2))
    else:
        _print_table(records, current)
    if problem and not any(r.reason and r.reason in problem for r in records):
        print(f"warning: {problem}")  # a corrupt record's reason is under the table already
    return 0


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _print_table(records: list, current: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="policies")
    for column in ("version", "parent", "method", "status", "rows"):
        table.add_column(column, no_wrap=True)
    for _, label in KEY_METRICS:
        table.add_column(label, justify="right", no_wrap=True)
    table.add_column("last eval", overflow="fold")
    reasons = []
    for r in records:
        status = "[bold green]current[/]" if r.version == current else r.status
        if r.reason:  # long gate reasons go under the table, so the columns stay readable
            reasons.append(f"{r.version} {r.status}: {r.reason}")
        rows = str(sum(d.rows for d in r.data)) if r.data else "-"
        metrics = [_fmt(r.metrics[key]) if key in r.metrics else "-" for key, _ in KEY_METRICS]
        last_eval = r.evals[-1].metrics if r.evals else {}
        # The headline numbers only; `--json` has every metric.
        short = {"win_rate": "win", "violation_rate": "viol", "passed": "pass"}
        evals = " ".join(
            f"{label} {_fmt(last_eval[key])}" for key, label in short.items() if key in last_eval
        )
        method = "?" if r.status == "corrupt" else r.method  # unread, not the base's
        table.add_row(r.version, r.parent or "-", method, status, rows, *metrics, evals or "-")
    console = Console()
    console.print(table)
    for line in reasons:
        console.print(line, highlight=False)
