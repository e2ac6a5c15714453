"""``selfimprove constitution validate|list|show``: check and inspect constitutions."""

from __future__ import annotations

import argparse
import sys

from selfimprove.constitution import constitution_to_yaml, list_constitutions, load_constitution
from selfimprove.errors import ConfigError

__all__ = ["cmd_list", "cmd_show", "cmd_validate", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``constitution`` command and its subcommands to the main parser."""
    parser = subparsers.add_parser(
        "constitution", help="validate, list and show constitutions"
    )
    sub = parser.add_subparsers(dest="constitution_command", metavar="SUBCOMMAND", required=True)

    validate = sub.add_parser("validate", help="validate constitution files (or names)")
    validate.add_argument("paths", nargs="+", metavar="PATH", help="file path or name")
    validate.set_defaults(func=cmd_validate)

    listing = sub.add_parser("list", help="list the constitutions that can be loaded by name")
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="print a constitution as YAML, with `extends` resolved")
    show.add_argument("name", metavar="NAME", help="name or path")
    show.set_defaults(func=cmd_show)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate every file; report each, and return 1 if any failed (after checking all)."""
    failed = 0
    for ref in args.paths:
        try:
            c = load_constitution(ref)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        print(
            f"ok: {ref} ({c.name} v{c.version}, {len(c.principles)} principles, "
            f"{len(c.checks)} checks)"
        )
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print a table of name, version, description and path."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("name", "version", "description", "path"):
        table.add_column(column, overflow="fold")
    for name, path, description in list_constitutions():
        try:
            version = str(load_constitution(path).version)
        except ConfigError:
            version = "invalid"
        table.add_row(name, version, description, str(path))
    # Piped output is not wrapped at 80 columns: one row per line is easier to grep.
    Console(width=None if sys.stdout.isatty() else 1000).print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print the resolved constitution as YAML (loadable again; same content hash)."""
    try:
        c = load_constitution(args.name)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"# {c.name} v{c.version} from {c.source}, resolved; content hash {c.content_hash}")
    sys.stdout.write(constitution_to_yaml(c))
    return 0
