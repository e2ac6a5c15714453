"""``selfimprove train dpo|sft RUN_DIR``: train the next policy version from the run's store.

The new version starts from ``--parent`` (default: the current version) and becomes current
unless ``--no-promote`` is given. Use ``accelerate launch -m selfimprove.training`` for
several GPUs (see ``examples/accelerate/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train dpo`` and ``train sft`` to the CLI."""
    train = subparsers.add_parser("train", help="train the next policy version (DPO or SFT)")
    sub = train.add_subparsers(dest="train_command", required=True, metavar="METHOD")
    helps = {
        "dpo": "DPO on the store's preference pairs",
        "sft": "SFT on the store's final revisions",
    }
    for method, text in helps.items():
        p = sub.add_parser(method, help=text, description=text + " (LoRA by default).")
        p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
        p.add_argument("--config", type=Path, help="YAML with TrainConfig fields")
        p.add_argument("--max-steps", type=int, help="optimizer steps (key: max_steps)")
        p.add_argument("--learning-rate", type=float, help="learning rate (key: learning_rate)")
        p.add_argument(
            "--parent", metavar="VERSION", help="start from this version (default: current)"
        )
        p.add_argument(
            "--promote",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="make the new version current (default: yes)",
        )
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        p.set_defaults(func=run_train, method=method)


def run_train(args: argparse.Namespace) -> int:
    from selfimprove.registry import PolicyRegistry
    from selfimprove.training.config import load_train_config
    from selfimprove.training.run import describe, load_store_data, train_policy

    # Config and data errors surface before a model is loaded.
    cfg = load_train_config(
        args.config,
        args.method,
        {"max_steps": args.max_steps, "learning_rate": args.learning_rate},
    )
    dataset, used = load_store_data(args.run_dir, args.method)
    registry = PolicyRegistry(args.run_dir)
    parent = registry.get(args.parent) if args.parent else registry.current()
    ref, result = train_policy(
        registry,
        dataset,
        cfg,
        data=used,
        parent=parent.version,
        promote=args.promote,
        progress=not args.no_progress,
    )
    print(describe(ref.version, args.promote, args.method, parent.version, result))
    return 0
