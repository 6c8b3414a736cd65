"""`rose-memory eval`: run the same-subject benchmark and write the JSON, answers and report."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from ..cli_options import add_device_options, add_quiet_option, progress_on
from ..errors import RoseMemoryError
from .runner import ALL_METHODS, MODES, parse_methods


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="run the same-subject editing benchmark",
        description="Write each subject's facts with each method, ask the model, and score the answers "
        "(efficacy, generalization, instruction, confusion, locality, fluency, name fidelity). "
        "Progress goes to stderr (--quiet silences it); the table of results to stdout.",
    )
    add_quiet_option(p)
    p.add_argument("--data", required=True, metavar="FILE", help="benchmark file (.jsonl, one subject a line)")
    p.add_argument("--locality", metavar="FILE", help="locality prompts (.jsonl with prompt and answer)")
    p.add_argument("--model", metavar="M", default=None, help="model: embedded default, a path, a hub id or a .gguf")
    add_device_options(p)
    p.add_argument("--methods", required=True, metavar="LIST", help=f"comma-separated, from: {','.join(ALL_METHODS)}")
    p.add_argument("--mode", required=True, choices=MODES,
                   help="batch: each subject's facts in one write on the clean model, reverted after its "
                        "probes; sequential: one fact per write, all kept, through a memory")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N subjects")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seeds the run and the edits (model-sampled prefixes and key statistics); "
                        "--set seed=K overrides the edits' seed")
    p.add_argument("--json", required=True, metavar="OUT",
                   help="results JSON to write (rewritten after each method), or - to print it on stdout "
                        "at the end instead of the table")
    p.add_argument("--report", metavar="DIR", help="write report.md and a bar chart PNG here")
    p.add_argument("--answers", metavar="FILE", help="write every probe as one JSON line here")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="keep the run's progress in DIR after each subject (a sequential run's memory too); "
                        "the same command with the same DIR goes on where a stopped run left off, and "
                        "reads back the methods it finished")
    p.add_argument("--end-sleep", action="store_true",
                   help="sequential mode, rose+consolidate: after the last write, sleep every subject with a wake "
                        "edit since its last sleep before the final probes (the end of a conversation); without "
                        "it the memory's policy alone decides when it sleeps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="override an editing setting (EditConfig field) for every editing method, e.g. "
                   "--set stage_steps=8 --set layers=[4,5,6]; values are JSON (bare words are strings)")
    p.add_argument("--sleep-set", action="append", default=[], metavar="KEY=VALUE", dest="sleep_settings",
                   help="override a sleep setting (SleepConfig field) for rose+consolidate, e.g. --sleep-set steps=20")
    p.set_defaults(func=run_command)


def _check_output(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise RoseMemoryError(f"{what} {path}: folder {parent} does not exist; create it first")
    if os.path.isdir(path):
        raise RoseMemoryError(f"{what} {path} is a directory; give a file name")


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (for the report)."""
    parts = ["rose-memory", "eval"]
    for flag in ("data", "locality", "model", "device", "dtype", "methods", "mode", "limit", "seed", "json", "report", "answers"):
        value = getattr(args, flag, None)
        if value is not None and not (flag in ("device", "dtype") and value == "auto"):
            parts += [f"--{flag}", str(value)]
    if getattr(args, "end_sleep", False):
        parts.append("--end-sleep")
    for item in getattr(args, "settings", None) or []:
        parts += ["--set", item]
    for item in getattr(args, "sleep_settings", None) or []:
        parts += ["--sleep-set", item]
    return " ".join(shlex.quote(p) for p in parts)


def parse_pairs(items: list[str], flag: str, example: str) -> dict:
    """KEY=VALUE flags -> {key: value}; a value is JSON, or a bare word taken as a string; a repeated
    or malformed pair is a RoseMemoryError naming `flag` with `example`."""
    out: dict = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise RoseMemoryError(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} {example}")
        if key in out:
            raise RoseMemoryError(f"{flag} {key} given twice")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw.strip()
    return out


def parse_sleep_settings(items: list[str]) -> dict:
    """['steps=20'] -> {'steps': 20}, checked against SleepConfig."""
    from pydantic import ValidationError

    from ..sleep.config import SleepConfig

    out = parse_pairs(items, "--sleep-set", "steps=20")
    try:
        SleepConfig.model_validate(out)
    except ValidationError as err:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise RoseMemoryError(f"--sleep-set: {msgs}") from None
    return out


def parse_settings(items: list[str]) -> dict:
    """['stage_steps=8', 'layers=[4,5]'] -> {'stage_steps': 8, 'layers': [4, 5]}."""
    out = parse_pairs(items, "--set", "stage_steps=8")
    if out:  # names, types and bounds now; layers against the model's depth once it is loaded
        from ..editing.config import validated

        validated(out, what="--set")
    return out


def run_command(args: argparse.Namespace) -> int:
    from .data import load_benchmark, load_locality

    # Everything the user gave is checked before the model is loaded or anything runs.
    methods = parse_methods(args.methods)
    settings = parse_settings(getattr(args, "settings", None) or [])
    sleep_settings = parse_sleep_settings(getattr(args, "sleep_settings", None) or [])
    subjects = load_benchmark(args.data)
    locality = load_locality(args.locality) if args.locality else []
    if args.limit is not None:
        if args.limit < 1:
            raise RoseMemoryError(f"--limit must be at least 1, got {args.limit}")
        subjects = subjects[: args.limit]
    to_stdout = args.json == "-"
    if not to_stdout:
        _check_output(args.json, "--json")
    if args.answers:
        _check_output(args.answers, "--answers")
    end_sleep = bool(getattr(args, "end_sleep", False))
    if end_sleep and args.mode != "sequential":
        raise RoseMemoryError("--end-sleep is for sequential mode; in batch mode every subject sleeps after its write")
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint and os.path.exists(checkpoint) and not os.path.isdir(checkpoint):
        raise RoseMemoryError(f"--checkpoint {checkpoint} is a file; give a folder")
    if args.report:
        if os.path.exists(args.report) and not os.path.isdir(args.report):
            raise RoseMemoryError(f"--report {args.report} is a file; give a folder")
        try:
            os.makedirs(args.report, exist_ok=True)
        except OSError as err:
            raise RoseMemoryError(f"--report {args.report}: cannot create the folder ({err})") from None

    from ..model import load_cached, resolve_device
    from .report import markdown_table, write_answers, write_json, write_report
    from .runner import EvalRun, Runner

    from ..progress import library_bars, stage

    progress = progress_on(args)
    device = resolve_device(args.device)  # a bad --device is an error before the model loads
    stage(f"loading the model {args.model or 'embedded'} ({device})", progress)
    with library_bars(progress):
        lm = load_cached(args.model, args.device, args.dtype)
    stage(f"{len(subjects)} subject(s), methods {', '.join(methods)}, {args.mode} mode", progress)
    runner = Runner(lm, subjects, locality, mode=args.mode, seed=args.seed, progress=progress,
                    keep_records=bool(args.answers), edit_config=settings, sleep_config=sleep_settings,
                    checkpoint=checkpoint, end_sleep=end_sleep)
    run = EvalRun(model=lm.name, data=args.data, mode=args.mode)

    def save(result) -> None:
        run.results.append(result)
        if not to_stdout:
            write_json(run, args.json)  # after every method, so a long run keeps what it measured

    runner.run(methods, on_result=save)
    if args.answers:
        write_answers(run.results, args.answers)
    if args.report:
        write_report(run, args.report, command=command_line(args))
    if to_stdout:
        json.dump(run.to_json(), sys.stdout, indent=2)
        print()
    else:
        print(markdown_table(run))
    return 0
