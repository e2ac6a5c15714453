"""``selfimprove report RUN_DIR``: regenerate a run's report.md and plots from its records."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run_report"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command to the CLI."""
    p = subparsers.add_parser(
        "report", help="regenerate a run's report.md and plots from its cycle records"
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "--out", type=Path, default=None,
        help="where to write the report (default RUN_DIR/report.md; plots stay in RUN_DIR/plots)",
    )
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    # Imported here: the report pulls in pydantic models of the gate, and plots need matplotlib.
    from selfimprove.report import ReportError, write_report
    from selfimprove.rundir import RunDir

    if args.out is not None and args.out.is_dir():
        raise ReportError(f"{args.out}: --out is a folder; name the report file (report.md)")
    run = RunDir(args.run_dir)
    cycles = run.load_cycles()
    if not cycles:
        raise ReportError(
            f"{run.path}: no finished cycles to report on "
            f"(expected {run.cycle_path(1)}, … written by `selfimprove run`)"
        )
    out = write_report(run, cycles, args.out)
    print(f"wrote {out} ({len(cycles)} cycles)")
    return 0
