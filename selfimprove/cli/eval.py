"""``selfimprove eval RUN_DIR``: measure versions of a run on the same prompts, side by side.

Greedy by default (the run's gate sampling), the same prompts for every version: the held-out
prompts of the run, or a prompt file. Per version it prints the violation rate and each
check's pass rate, and what training did not target: repetition, truncation at the token cap,
near-empty answers, mean length and retention NLL; then each later version against the first,
prompt by prompt (prompts gained and lost, exact McNemar p-value).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate versions of a run on held-out or given prompts")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--versions", default="v0,current",
                   help="comma-separated versions (v0, v3, current, all; default v0,current)")
    p.add_argument("--prompts", help="a prompt file (JSONL or text) or a packaged prompt set; "
                   "default: the run's held-out prompts")
    p.add_argument("--limit", type=int, help="at most this many prompts (default: the gate's "
                   "num_prompts; with --save: all)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--save", action="store_true",
                   help="with --prompts: keep the results as a transfer set of the run "
                   "(RUN_DIR/evals/transfer/) and rewrite its report; the prompts must not be "
                   "training prompts of the run")
    p.set_defaults(func=run_eval)


def _versions(spec: str, registry) -> list[str]:
    from selfimprove.errors import SelfImproveError

    out: list[str] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name == "all":
            out += [r.version for r in registry.versions() if r.status != "corrupt"]
        elif name == "current":
            out.append(registry.current_version())
        else:
            registry.get(name)  # raises a clear error for an unknown or corrupt version
            out.append(name)
    if not out:
        raise SelfImproveError("--versions names no version")
    return list(dict.fromkeys(out))


def run_eval(args: argparse.Namespace) -> int:
    from selfimprove.constitution import load_constitution
    from selfimprove.errors import ConfigError
    from selfimprove.paired import paired_passes
    from selfimprove.registry import PolicyRegistry
    from selfimprove.rundir import RunDir
    from selfimprove.runner import load_run_config, prepare
    from selfimprove.sources import load_prompt_records
    from selfimprove.transfer import load_transfer_sets, transfer_set_name

    run = RunDir(args.run_dir)
    cfg = load_run_config(run)
    constitution = load_constitution(cfg.critique.constitution)
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit", f"must be at least 1, got {args.limit}")
    if args.save and not args.prompts:
        raise ConfigError("--save", "needs --prompts: the run's held-out prompts are in its "
                          "report already")
    if args.prompts and args.save:
        # loaded once, and refused if it holds a training prompt of the run
        prepared = prepare(cfg, run.config_path)
        (prompts,) = load_transfer_sets([args.prompts], prepared.train_prompts, "--prompts",
                                        field=None, constitution=prepared.constitution).values()
        source = str(args.prompts)
    elif args.prompts:
        prompts = load_prompt_records(args.prompts, constitution=constitution)
        source = str(args.prompts)
    else:
        prompts = prepare(cfg, run.config_path).heldout_prompts
        source = "held-out prompts of the run"
    # a transfer set is kept whole, as the run evaluates it; else as many as the gate uses
    prompts = prompts[: args.limit or (None if args.save else cfg.gate.num_prompts)]
    registry = PolicyRegistry(run.path)
    versions = _versions(args.versions, registry)
    evals = asyncio.run(_evaluate(cfg, constitution, registry, versions, prompts))
    if args.save:
        _save(run, transfer_set_name(args.prompts), evals)
    # each later version against the first, prompt by prompt
    paired = [paired_passes(evals[0], e) for e in evals[1:]]
    if args.json:
        print(json.dumps({"source": source, "prompts": len(prompts),
                          "versions": [_summary(e) for e in evals],
                          "paired": [p.model_dump() for p in paired]}, indent=2))
    else:
        _print_table(evals, source)
        for p in paired:
            print(f"passes every check: {p.summary()}")
    return 0


def _save(run, name: str, evals) -> None:
    """Keep ``evals`` as transfer set ``name`` and rewrite the reports that show it."""
    from selfimprove.report import write_report
    from selfimprove.rundir import RunDir

    for e in evals:
        run.save_transfer(name, e)
    write_report(run)
    parent = RunDir(run.path.resolve().parent)
    if run.path.name == RunDir.CONTROL and parent.holds_run():
        write_report(parent)  # the loop's report shows its control arm's sets too


async def _evaluate(cfg, constitution, registry, versions, prompts):
    from selfimprove.evaluation import evaluate_policy
    from selfimprove.wiring import make_roles

    roles = make_roles(cfg.critique.roles)
    try:
        return [
            await evaluate_policy(roles.policy, registry.get(v), prompts, constitution,
                                  cfg.gate.sampling)
            for v in versions
        ]
    finally:
        await roles.aclose()


def _summary(e) -> dict:
    d = e.degeneration
    return {
        "version": e.version,
        "prompts": e.n_prompts,
        "violation_rate": e.violation_rate,
        "check_pass_rates": e.check_pass_rates,
        "kind_pass_rates": e.kind_pass_rates,
        "kind_counts": e.kind_counts,
        "passes_all_checks": sum(e.passes_checks),
        "repetition_rate": d.repetition_rate if d else None,
        "truncation_rate": d.truncation_rate if d else None,
        "near_empty_rate": d.near_empty_rate if d else None,
        "mean_words": e.mean_words,
        "median_words": d.median_words if d else None,
        "retention_nll": e.retention_nll,
    }


def _print_table(evals, source: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value, spec=".2f"):
        return "–" if value is None else format(value, spec)

    # One column a version, one row a measure: a row per check kind would run off a terminal.
    table = Table(title=f"{len(evals[0].prompts) if evals else 0} {source}, greedy")
    table.add_column("measure", justify="left")
    for e in evals:
        table.add_column(e.version, justify="right")
    summaries = [_summary(e) for e in evals]
    measures = [("violations", "violation_rate", ".2f"), ("repeats itself", "repetition_rate",
                 ".2f"), ("hit token cap", "truncation_rate", ".2f"),
                ("near-empty", "near_empty_rate", ".2f"), ("mean words", "mean_words", ".1f"),
                ("retention NLL", "retention_nll", ".3f")]
    for label, key, spec in measures:
        table.add_row(label, *(fmt(s[key], spec) for s in summaries))
    for kind in sorted({kind for e in evals for kind in e.kind_pass_rates}):
        table.add_row(f"passes {kind}", *(fmt(e.kind_pass_rates.get(kind)) for e in evals))
    Console().print(table)
