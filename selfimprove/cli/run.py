"""``selfimprove run``: autonomous improvement cycles, with live progress and --resume."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selfimprove.config import RunConfig, load_config, validate_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run improvement cycles (critique → harvest → train → gate)")
    p.add_argument("--config", type=Path, help="run config YAML (see examples/configs/)")
    p.add_argument("--run-dir", type=Path, help="directory for the store, policies, report")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--cycles", type=int, help="number of cycles (key: cycles)")
    p.add_argument("--batch-size", type=int, help="prompts per cycle (key: batch_size)")
    p.add_argument("--seed", type=int, help="seed (key: seed)")
    p.add_argument("--constitution", help="constitution name or path (critique.constitution)")
    p.add_argument("--model", help="policy model (critique.roles.policy.backend.model)")
    p.add_argument("--durable", action=argparse.BooleanOptionalAction, default=None,
                   help="checkpoint every step (key: durable)")
    p.set_defaults(func=run_command)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    data = (load_config(args.config, RunConfig) if args.config else RunConfig()).model_dump()
    for key in ("cycles", "batch_size", "seed", "durable"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.constitution:
        data["critique"]["constitution"] = args.constitution
    if args.model:
        data["critique"]["roles"]["policy"]["backend"]["model"] = args.model
    return validate_overrides(RunConfig, data, FLAGS)


#: config keys set by flags, so an invalid value names the flag
FLAGS = {"cycles": "--cycles", "batch_size": "--batch-size", "seed": "--seed",
         "critique.constitution": "--constitution",
         "critique.roles.policy.backend.model": "--model"}


def run_command(args: argparse.Namespace) -> int:
    from selfimprove.runner import run

    if args.resume and (args.config or args.run_dir):
        raise SystemExit("error: --resume takes the run directory alone (its config is saved)")
    if not args.resume and not args.run_dir:
        raise SystemExit("error: give --run-dir (new run) or --resume RUN_DIR")
    printer = ProgressPrinter()
    if args.resume:
        state = run(None, args.resume, resume=True, progress=printer)
        run_dir = args.resume
    else:
        cfg = config_from_args(args)
        state = run(cfg, args.run_dir, config_path=args.config, progress=printer)
        run_dir = args.run_dir
    records = state.get("records", [])
    printer.console.print(
        f"[bold]done[/bold]: {len(records)} cycles, current policy "
        f"{records[-1]['current'] if records else 'v0'}; report: {Path(run_dir) / 'report.md'}"
    )
    return 0


class ProgressPrinter:
    """Live progress lines: cycle, stage, prompts done, pairs, training, evaluation."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)
        self.start = time.perf_counter()
        self._last_critique = 0.0

    def __call__(self, stage: str, message: str) -> None:
        now = time.perf_counter()
        if stage == "critique":  # one line per prompt would flood the terminal
            done, _, total = message.rpartition(" ")[2].partition("/")
            if done != total and now - self._last_critique < 5:
                return
            self._last_critique = now
        elapsed = time.strftime("%M:%S", time.gmtime(now - self.start))
        self.console.print(f"[dim]{elapsed}[/dim] [cyan]{stage:>9}[/cyan]  {message}")
