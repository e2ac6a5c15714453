"""``selfimprove train dpo|sft RUN_DIR``: train the next policy version from the run's store.

The new version starts from ``--parent`` (default: the current version) and becomes current
unless ``--no-promote`` is given. Use ``accelerate launch -m selfimprove.training`` for
several GPUs (see ``examples/accelerate/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selfimprove.training.policy import add_train_arguments, run_training

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
        add_train_arguments(p)
        p.set_defaults(func=run_training, method=method)
