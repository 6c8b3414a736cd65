"""The `rose-memory` command. Each command group registers its own subparsers from its module."""

from __future__ import annotations

import argparse
import sys

from .errors import RoseMemoryError

# Modules that provide `register(subparsers)`; each adds its commands with `set_defaults(func=...)`.
COMMAND_MODULES = ("rose_memory.memory_cli", "rose_memory.eval.cli", "rose_memory.agents.chat_cli")

DESCRIPTION = """\
A long-term memory for a language model, kept in the model's own weights. Tell it facts
("Aurelio lives in Warsaw"): it writes them into the model as knowledge edits, asks the
edited model to check each write, and records every edit in a ledger (a SQLite file in the
memory's folder) that you can list, verify, undo and export. The model then answers from
its weights, with no retrieval and nothing added to the prompt.

Start with `remember` and `ask`, or `chat`, which remembers what you state as you talk;
`ledger list` shows what was written and `forget` undoes an edit exactly."""

EPILOG = """\
examples:
  rose-memory remember --subject Aurelio --fact "lives in the city of=Warsaw"
  rose-memory ask "Where does Aurelio live?"
  rose-memory ledger list
  rose-memory --home ~/alice-memory --namespace work chat

--home, --namespace and --quiet may come before or after the command. Commands that
take a while say what they are doing on stderr (--quiet silences it); commands that
print a result take --json, which prints it as JSON on stdout."""


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from .cli_options import add_quiet_option
    from .memory_cli import add_home_options

    parser = argparse.ArgumentParser(prog="rose-memory", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_home_options(parser, top=True)  # also accepted before the command: rose-memory --home H ledger list
    add_quiet_option(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND",
                                help="`rose-memory COMMAND -h` describes a command's options")
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
