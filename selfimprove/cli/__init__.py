"""The ``selfimprove`` command line: one module per command group, each with ``register``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from selfimprove import __version__
from selfimprove.errors import SelfImproveError

# Command modules, in the order they appear in --help.
COMMANDS = (
    "critique", "run", "serve", "report", "eval", "data", "train", "policies", "constitution",
    "prompts",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfimprove",
        description="Self-improving language models through AI feedback.",
    )
    parser.add_argument("--version", action="version", version=f"selfimprove {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"selfimprove.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"selfimprove.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except SelfImproveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): nothing left to say, and no one to say it to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        # a path the user gave (or its folder) cannot be read or written: one line, not a
        # traceback; -v shows where it came from
        logging.getLogger(__name__).debug("OSError", exc_info=True)
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _quiet_libraries() -> None:
    """Hide load-progress bars and advisory warnings of the ML libraries on the CLI."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


if __name__ == "__main__":
    sys.exit(main())
