"""``selfimprove prompts synth``: generate instruction prompts that carry their own checks."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from selfimprove.errors import ConfigError

__all__ = ["register", "run_synth"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prompts`` command and its subcommands to the CLI."""
    parser = subparsers.add_parser("prompts", help="generate prompt sets")
    sub = parser.add_subparsers(dest="prompts_command", metavar="SUBCOMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="instruction prompts with executable checks (verifiable instructions)",
        description="Write N instruction prompts, each with one or two instructions and the "
        "checks that verify them, as a JSON-lines prompt file. Same seed, same file.",
    )
    synth.add_argument("--n", type=int, required=True, help="number of prompts (>= 1)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    synth.add_argument(
        "--kinds", default=None, metavar="K1,K2",
        help="only these instruction kinds (comma-separated; default all)",
    )
    synth.add_argument(
        "--exclude-kinds", default=None, metavar="K1,K2",
        help="never these instruction kinds (e.g. the held-out quoted,no_commas)",
    )
    synth.set_defaults(func=run_synth)


def _kind_list(text: str | None, flag: str) -> list[str] | None:
    from selfimprove.synth import KINDS

    if text is None:
        return None
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise ConfigError(flag, "needs at least one kind")
    for kind in kinds:
        if kind not in KINDS:
            known = ", ".join(KINDS)
            raise ConfigError(flag, f"unknown instruction kind {kind!r} (known: {known})")
    return kinds


def run_synth(args: argparse.Namespace) -> int:
    """Generate and write the prompts; bad arguments raise ConfigError naming the flag."""
    from selfimprove.synth import resolve_kinds, synth_prompts, write_jsonl

    if args.n < 1:
        raise ConfigError("--n", f"must be >= 1, got {args.n}")
    kinds = _kind_list(args.kinds, "--kinds")
    excluded = _kind_list(args.exclude_kinds, "--exclude-kinds") or []
    try:
        resolve_kinds(kinds, excluded)
    except ValueError as exc:  # every kind excluded
        raise ConfigError("--exclude-kinds" if excluded else "--kinds", str(exc)) from None
    try:
        records = synth_prompts(args.n, args.seed, kinds=kinds, exclude_kinds=excluded)
    except ValueError as exc:  # the kinds allow fewer distinct prompts than --n
        raise ConfigError("--n", str(exc)) from None
    out = write_jsonl(records, args.out)
    counts = Counter(c.kind for r in records for c in r.checks)
    summary = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
    print(f"wrote {len(records)} prompts to {out} ({summary})")
    return 0
