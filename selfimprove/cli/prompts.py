"""``selfimprove prompts``: generate instruction prompts that carry their own checks
(``synth``), and check prompt files without loading a model (``check``)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from selfimprove.errors import ConfigError

__all__ = ["register", "run_check", "run_synth"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prompts`` command and its subcommands to the CLI."""
    parser = subparsers.add_parser("prompts", help="generate and check prompt files")
    sub = parser.add_subparsers(dest="prompts_command", metavar="SUBCOMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="instruction prompts with executable checks (verifiable instructions)",
        description="Write N instruction prompts, each with one or two instructions and the "
        "checks that verify them, as a JSON-lines prompt file. Same seed, same file.",
    )
    synth.add_argument("--n", type=int, required=True, help="number of prompts (1 to 100000)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--out", type=Path, required=True, help="the .jsonl file to write")
    synth.add_argument("--force", action="store_true", help="replace --out if it exists")
    synth.add_argument(
        "--kinds", default=None, metavar="K1,K2",
        help="only these instruction kinds (comma-separated; default all)",
    )
    synth.add_argument(
        "--exclude-kinds", default=None, metavar="K1,K2",
        help="never these instruction kinds (e.g. the held-out quoted,no_commas)",
    )
    synth.set_defaults(func=run_synth)

    check = sub.add_parser(
        "check",
        help="validate prompt files (JSON lines or text) and the checks they carry",
        description="Load each prompt file as a run would, without loading a model: every "
        "error names the file, the line and the field. With --constitution, a prompt check "
        "may not reuse the id of one of the constitution's checks for a different check.",
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="prompt file or packaged set")
    check.add_argument("--constitution", default=None, metavar="NAME",
                       help="constitution (name or path) the prompts will be critiqued under")
    check.add_argument("--field", default="prompt",
                       help="the field holding the prompt (a run's prompts.field; default prompt)")
    check.set_defaults(func=run_check)


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
    from selfimprove.sources import JSON_LINES_SUFFIXES
    from selfimprove.synth import MAX_PROMPTS, resolve_kinds, synth_prompts, write_jsonl

    if not 1 <= args.n <= MAX_PROMPTS:
        raise ConfigError("--n", f"must be between 1 and {MAX_PROMPTS}, got {args.n}")
    if args.out.suffix.lower() not in JSON_LINES_SUFFIXES:
        # other names are read back as plain text, one prompt a line, without their checks
        raise ConfigError(args.out, "--out must end in .jsonl (or .json, .ndjson): prompt "
                          "files with other names are read as plain text, without checks")
    if args.out.is_dir():
        raise ConfigError(args.out, "--out is a directory; name the .jsonl file to write")
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
    if args.out.exists() and not args.force:
        raise ConfigError(args.out, "--out exists (a prompt file of yours?); pass --force to "
                          "replace it, or name a new file")
    out = write_jsonl(records, args.out)
    counts = Counter(c.kind for r in records for c in r.checks)
    summary = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
    print(f"wrote {len(records)} prompts to {out} ({summary})")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Check every file; report each, and return 1 if any failed (after checking all)."""
    from selfimprove.constitution import load_constitution
    from selfimprove.sources import load_prompt_records

    constitution = load_constitution(args.constitution) if args.constitution else None
    failed = 0
    for ref in args.paths:
        try:
            records = load_prompt_records(ref, args.field, all_errors=True,
                                          constitution=constitution)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        counts = Counter(c.kind for r in records for c in r.checks)
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "none"
        with_checks = sum(1 for r in records if r.checks)
        print(f"ok: {ref} ({len(records)} prompts, {with_checks} with checks; check kinds: "
              f"{kinds})")
    return 1 if failed else 0

