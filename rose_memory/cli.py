"""The `rose-memory` command. Each command group registers its own subparsers from its module."""

from __future__ import annotations

import argparse
import sys

from .errors import RoseMemoryError

# Modules that provide `register(subparsers)`; each adds its commands with `set_defaults(func=...)`.
COMMAND_MODULES = ("rose_memory.memory_cli", "rose_memory.eval.cli", "rose_memory.agents.chat_cli")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from .memory_cli import add_home_options

    parser = argparse.ArgumentParser(prog="rose-memory", description=__doc__)
    add_home_options(parser, top=True)  # also accepted before the command: rose-memory --home H ledger list
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue  # a command group not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RoseMemoryError as err:
        print(f"rose-memory: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
