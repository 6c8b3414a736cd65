"""`rose-memory chat`: a terminal chat whose long-term memory is the model's weights."""

from __future__ import annotations

import argparse
import sys

from rose_memory.cli_options import add_device_options, add_quiet_option, progress_on
from rose_memory.memory_cli import add_home_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat in the terminal; facts you state are written into the model's weights",
        description="A long-running chat. Only the last --window exchanges stay in the prompt; older "
        "facts survive only as edits in the weights (and across sessions, through the home's ledger). "
        "Type /help in the chat for its commands (/remember, /forget, /memories, /sleep, ...). "
        "Loading, writes and sleeps are reported on stderr unless --quiet.",
    )
    add_home_options(p)
    add_quiet_option(p)
    p.add_argument("--json", action="store_true",
                   help="print each turn as one JSON line on stdout (question, answer, written: the memory writes, "
                        "source, errors) and nothing else: no banner, no prompt on stdout; for programs and pipes")
    p.add_argument("--model", default=None,
                   help="model name or path when the home is new (default: the embedded SmolLM2-135M-Instruct)")
    add_device_options(p)
    p.add_argument("--window", type=int, default=3, metavar="N", help="exchanges kept in the prompt (default 3)")
    p.add_argument("--no-extractor", action="store_true",
                   help="write only what the agent saves with its tool or you save with /remember")
    p.add_argument("--max-new-tokens", type=int, default=96, metavar="N", help="longest answer in tokens (default 96)")
    p.add_argument("--echo", action="store_true",
                   help="print each input line (for transcripts; on by default when stdin is not a terminal; "
                        "never with --json)")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from .chatbot import ChatSession, run_json_lines, run_terminal

    if args.window < 0:
        from rose_memory.errors import RoseMemoryError

        raise RoseMemoryError("--window must be 0 or more exchanges")
    from rose_memory.facts import check_namespace
    from rose_memory.memory import check_home

    namespace = check_namespace(args.namespace)
    if args.home is not None:
        check_home(args.home.expanduser())  # a file as --home: refused before the model loads
    interactive = sys.stdin.isatty()
    with ChatSession.open(args.home, args.model, window=args.window, extractor=not args.no_extractor,
                          max_new_tokens=args.max_new_tokens, namespace=namespace, device=args.device,
                          dtype=args.dtype, progress=progress_on(args)) as session:
        if args.json:  # stdout holds the JSON lines only; an interactive prompt goes to stderr
            run_json_lines(session, read=_read_prompting_on_stderr if interactive else _read_piped,
                           write=lambda line: print(line, flush=True))
        else:
            run_terminal(session, read=input if interactive else _read_piped, echo=args.echo or not interactive)
    return 0


def _read_piped(prompt: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def _read_prompting_on_stderr(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    return input()
