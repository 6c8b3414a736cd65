"""CLI commands on a memory home: remember, ask, forget, ledger, consolidate, export.

Ledger commands read the SQLite file only; they never load the model. `--home`, `--namespace`
and `--quiet` may come before the command (`rose-memory --home H ledger list`) or after it.
A command says what it is doing on stderr (rose_memory/progress.py) unless --quiet; --json
prints the result as JSON on stdout, which nothing else is written to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_options import add_device_options, add_quiet_option, progress_on
from .errors import RoseMemoryError
from .facts import check_namespace, make_facts
from .holding import HELD
from .progress import stage


HOME_HELP = "memory folder (default: $ROSE_MEMORY_HOME or ~/.rose-memory)"
NAMESPACE_HELP = "the namespace (a set of edits, e.g. one user's) to read or change (default: default)"


def add_home_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--home and --namespace. On the top-level parser they carry the defaults; on a command they are
    SUPPRESSed when absent, so that a value given before the command is not overwritten by the
    command's default (argparse copies a subparser's defaults over the parent's values)."""
    parser.add_argument("--home", type=Path, default=None if top else argparse.SUPPRESS, help=HOME_HELP)
    parser.add_argument("--namespace", default="default" if top else argparse.SUPPRESS, metavar="NAME",
                        help=NAMESPACE_HELP)


def register(subparsers) -> None:
    home = argparse.ArgumentParser(add_help=False)
    add_home_options(home)
    add_quiet_option(home)
    common = argparse.ArgumentParser(add_help=False, parents=[home])
    common.add_argument("--json", action="store_true", help="print the result as JSON on stdout instead of text")
    with_model = argparse.ArgumentParser(add_help=False, parents=[common])
    with_model.add_argument("--model", default=None,
                            help="model name or path when the home is new (default: the embedded SmolLM2-135M-Instruct)")
    add_device_options(with_model)

    p = subparsers.add_parser("remember", parents=[with_model], help="write facts about a subject into the weights")
    p.add_argument("--subject", required=True, help="who or what the facts are about, e.g. Aurelio")
    p.add_argument("--fact", action="append", required=True, metavar="RELATION=OBJECT",
                   help='e.g. --fact "lives in the city of=Warsaw" (the subject goes first, or where {} stands: '
                        '--fact "{}\'s favorite color is=brown"); repeat for several facts')
    p.set_defaults(func=cmd_remember)

    p = subparsers.add_parser("ask", parents=[with_model], help="ask the edited model a question")
    p.add_argument("question", help="the question, asked through the model's chat template")
    p.add_argument("--max-new-tokens", type=int, default=48, metavar="N", help="longest answer in tokens (default 48)")
    p.set_defaults(func=cmd_ask)

    p = subparsers.add_parser("forget", parents=[with_model], help="undo an edit exactly (or every edit about a subject)")
    p.add_argument("edit_id", nargs="?", type=int, help="the edit to undo (its id in `rose-memory ledger list`)")
    p.add_argument("--subject", help="undo every live edit about this subject instead")
    p.set_defaults(func=cmd_forget)

    p = subparsers.add_parser("ledger", help="inspect and audit the edit ledger (never loads the model)",
                              description="The ledger records every edit and every change of its status, "
                              "hash-chained (HMAC-chained when ROSE_MEMORY_LEDGER_KEY is set; see docs/security.md).")
    sub = p.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND",
                           help="list, show, verify or serve")
    q = sub.add_parser("list", parents=[common], help="the namespace's edits, oldest first")
    q.add_argument("--status", choices=["pending", "applied", "failed", "superseded", "forgotten", "consolidated"],
                   help="only edits with this status")
    q.add_argument("--all-namespaces", action="store_true", help="every namespace's edits")
    q.set_defaults(func=cmd_ledger_list)
    q = sub.add_parser("show", parents=[common], help="one edit and its events")
    q.add_argument("edit_id", type=int, help="the edit's id (see `rose-memory ledger list`)")
    q.set_defaults(func=cmd_ledger_show)
    q = sub.add_parser("verify", parents=[common],
                       help="check the hash chain (every namespace) and delta files; non-zero exit on a problem")
    q.set_defaults(func=cmd_ledger_verify)
    q = sub.add_parser("serve", parents=[home],
                       help="browse the ledger read-only in Datasette, with canned audit queries (pip install 'rose-memory[audit]')")
    q.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; no authentication, so keep it local)")
    q.add_argument("--port", type=int, default=8001, help="port to listen on (default 8001)")
    q.set_defaults(func=cmd_ledger_serve)

    p = subparsers.add_parser(
        "consolidate", parents=[with_model],
        help="sleep: distil each subject's written facts into the chat pathway (minutes per subject on a CPU)",
        description="Sleep, per subject with wake edits written since its last sleep: questions are made about each fact, the model with "
                    "the facts in its system prompt answers them, and a small low-rank delta is trained so that "
                    "the weights answer the same way without the prompt. The delta is scaled down (by default 1 to 0.35) "
                    "until it keeps 95% of the model's answers about made-up people it never trained on (refused "
                    "if no scale does); each "
                    "fact is then asked with questions held back from training, and the sleep is kept only if "
                    "it answers more of them than the wake edits alone. Otherwise nothing changes. Every step is "
                    "in the ledger (`rose-memory ledger show ID`); `forget --subject` undoes the sleep with the "
                    "subject's writes. About 2-3 minutes a subject on 2 CPU cores. Settings: docs/sleep.md.")
    p.add_argument("--subject", help="only this subject, slept again even if nothing of it is new (default: every "
                                     "subject with a wake edit written since its last sleep)")
    p.add_argument("--again", action="store_true",
                   help="every subject with a live wake edit, also those slept since their last write "
                        "(e.g. after changing the sleep settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sleep_settings",
                   help="a sleep setting (SleepConfig field) for this home, kept in its config.json, e.g. --set steps=24")
    p.set_defaults(func=cmd_consolidate)

    p = subparsers.add_parser("export", parents=[with_model], help="write the live edits as a LoRA adapter or a merged model")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--lora", type=Path, metavar="DIR",
                       help="write a peft LoRA adapter of the namespace's live edits to DIR")
    group.add_argument("--merged", type=Path, metavar="DIR",
                       help="write the edited model (and its tokenizer) with save_pretrained to DIR")
    p.add_argument("--max-rank", type=int, default=None, help="LoRA rank cap (default from the home's config, 64)")
    p.set_defaults(func=cmd_export)


# -- helpers ------------------------------------------------------------------------------------


def _home(args) -> Path:
    from .memory import check_home, default_home

    home = getattr(args, "home", None)
    return check_home(home.expanduser() if home else default_home())


def _namespace(args) -> str:
    return check_namespace(getattr(args, "namespace", "default"))


def _open(args, **options):
    from .memory import ParametricMemory

    return ParametricMemory(_home(args), model=args.model, device=args.device, dtype=args.dtype,
                            progress=progress_on(args), **options)


def _existing(args) -> Path:
    home = _home(args)
    if not (home / "ledger.sqlite").is_file():
        raise RoseMemoryError(f"no memory at {home}; create one with `rose-memory remember`, or pass --home")
    return home


def _ledger(args):
    from .stores.ledger import Ledger, resolve_key

    home = _existing(args)
    try:  # the home's key file, read without the model's config types (no torch here)
        key_file = json.loads((home / "config.json").read_text()).get("ledger_key_file")
    except (OSError, ValueError, AttributeError):
        key_file = None
    return Ledger(home / "ledger.sqlite", key=resolve_key(key_file))


def _emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _fact_text(subject: str, fact: dict) -> str:
    return f"{fact['prompt'].format(subject)} -> {fact['object']}"


def parse_fact(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise RoseMemoryError(f"fact {text!r} has no '='; write it as RELATION=OBJECT, e.g. \"lives in the city of=Warsaw\"")
    relation, obj = text.split("=", 1)
    return relation.strip(), obj.strip()


def _relation(prompt: str) -> str:
    """A stored prompt written back the way --fact takes it."""
    return prompt[3:] if prompt.startswith("{} ") else prompt


def _recall_text(recall: dict) -> str:
    keys = [k for k in ("edit", "chat", "about") if k in recall]
    return ", ".join(f"{k} {recall[k]:.2f}" for k in keys)


# -- commands -----------------------------------------------------------------------------------


def cmd_remember(args) -> int:
    facts = [parse_fact(f) for f in args.fact]
    make_facts(args.subject, facts)  # reject bad input before the model loads
    namespace = _namespace(args)
    with _open(args) as mem:
        rec = mem.write(args.subject, facts, namespace=namespace)
    lines = [f"edit {rec.edit_id} {rec.status}: " + "; ".join(_fact_text(rec.subject, f) for f in rec.facts)]
    if rec.recall:
        lines.append(f"  recall: {_recall_text(rec.recall)}")
    if rec.superseded:
        lines.append(f"  supersedes edit {', '.join(map(str, rec.superseded))}")
    if rec.consolidated_into:
        lines.append(f"  consolidated into edit {rec.consolidated_into}")
    if rec.reason:
        lines.append(f"  {rec.reason}")
    _emit(args, rec.model_dump(), "\n".join(lines))
    return 0 if rec.status == "applied" else 1


def cmd_ask(args) -> int:
    if not args.question.strip():
        raise RoseMemoryError("question is empty; ask something, e.g. 'Where does Aurelio live?'")
    namespace = _namespace(args)
    with _open(args) as mem:
        answer = mem.ask(args.question, max_new_tokens=args.max_new_tokens, namespace=namespace)
    _emit(args, {"question": args.question, "answer": answer}, answer)
    return 0


def cmd_forget(args) -> int:
    if (args.edit_id is None) == (args.subject is None):
        raise RoseMemoryError("give an edit id or --subject S (one of them)")
    namespace = _namespace(args)
    ledger = _ledger(args)  # refuse an unknown id or subject before the model loads
    try:
        if args.edit_id is not None:
            row = _row_in(ledger, args.edit_id, namespace)
            if row["status"] not in HELD:
                raise RoseMemoryError(f"edit {args.edit_id} is {row['status']}; only applied edits can be forgotten")
        elif not ledger.rows(status="applied", subject=args.subject.strip(), namespace=namespace):
            raise RoseMemoryError(f"no applied edits about {args.subject!r} in namespace {namespace!r}; "
                                  "see `rose-memory ledger list`")
    finally:
        ledger.close()
    with _open(args) as mem:
        last = max((r["id"] for r in mem.edits()), default=0)
        ids = mem.forget(args.edit_id, subject=args.subject, namespace=namespace)
        again = [r for r in mem.edits(namespace=namespace) if r["id"] > last]  # the other facts the forgotten edits held
    text = f"forgot edit {', '.join(map(str, ids))}"
    for r in again:
        text += (f"\nwrote again as edit {r['id']} ({r['status']}): "
                 + "; ".join(_fact_text(r["subject"], f) for f in r["facts"]))
    _emit(args, {"forgotten": ids, "written_again": [{"id": r["id"], "status": r["status"], "facts": r["facts"]}
                                                     for r in again]}, text)
    return 0


def cmd_ledger_list(args) -> int:
    namespace = None if args.all_namespaces else _namespace(args)
    ledger = _ledger(args)
    try:
        rows = ledger.rows(status=args.status, namespace=namespace)
    finally:
        ledger.close()
    lines = [f"{'id':>4}  {'status':<12}  {'created':<19}  " + ("namespace  " if namespace is None else "") + "subject: facts"]
    for r in rows:
        facts = "; ".join(f"{_relation(f['prompt'])}={f['object']}" for f in r["facts"])
        lines.append(f"{r['id']:>4}  {r['status']:<12}  {r['created_at'][:19]}  "
                     + (f"{r['namespace']}  " if namespace is None else "") + f"{r['subject']}: {facts}")
    empty = "the ledger is empty" if namespace is None else f"no edits in namespace {namespace!r}"
    _emit(args, rows, "\n".join(lines) if rows else empty)
    return 0


def _row_in(ledger, edit_id: int, namespace: str) -> dict:
    """The ledger row of `edit_id`, which must belong to `namespace` (ids are global, edits are not)."""
    row = ledger.get(edit_id)
    if row["namespace"] != namespace:
        raise RoseMemoryError(f"edit {edit_id} is in namespace {row['namespace']!r}, not {namespace!r}; "
                              f"add --namespace {row['namespace']}")
    return row


def cmd_ledger_show(args) -> int:
    ledger = _ledger(args)
    try:
        row, events = _row_in(ledger, args.edit_id, _namespace(args)), ledger.events(args.edit_id)
    finally:
        ledger.close()
    lines = [f"edit {row['id']} ({row['status']}, {row['origin']}, method {row['method']}, namespace {row['namespace']})"]
    carried = {f["prompt"]: f["from"] for f in (row["metrics"] or {}).get("carried", [])}
    lines += [f"  {_fact_text(row['subject'], f)}" + (f"  (carried from edit {carried[f['prompt']]})" if f["prompt"] in carried else "")
              for f in row["facts"]]
    for key in ("reason", "delta_file", "delta_sha256", "superseded_by", "consolidated_into"):
        if row[key] is not None:
            lines.append(f"  {key}: {row[key]}")
    recall = (row["metrics"] or {}).get("recall")
    if recall:
        lines.append(f"  recall: {_recall_text(recall)}")
        lines += [f"    {a['fact']!r}: edit form {a['edit']!r} | chat {a['chat']!r}" for a in recall.get("answers", [])]
    lines.append("  events:")
    lines += [f"    {e['at'][:19]}  {e['from_status'] or '-'} -> {e['to_status']}"
              + (f"  {json.dumps(e['data']['recheck'])}" if "recheck" in e["data"] else "") for e in events]
    _emit(args, row | {"events": events}, "\n".join(lines))
    return 0


def cmd_ledger_verify(args) -> int:
    ledger = _ledger(args)
    try:
        problems = ledger.verify(_home(args) / "deltas")
        n_rows, n_events = len(ledger.rows()), len(ledger.events())
    finally:
        ledger.close()
    text = "\n".join(problems) if problems else f"ledger OK: {n_rows} edits, {n_events} events, delta files match"
    _emit(args, {"ok": not problems, "problems": problems}, text)
    if problems and not args.json:
        print(f"rose-memory: {len(problems)} problem(s) in the ledger at {_home(args)}", file=sys.stderr)
    return 1 if problems else 0


# Datasette's canned queries over the ledger (read-only SQL; :name is a form field).
AUDIT_QUERIES = {
    "live_edits": {
        "title": "Live edits of a namespace",
        "sql": "SELECT id, subject, facts, method, origin, applied_at, delta_file FROM edits "
               "WHERE status = 'applied' AND namespace = :namespace ORDER BY id",
    },
    "subject_history": {
        "title": "Every event about a subject",
        "sql": "SELECT ev.id AS event, ev.edit_id, ed.namespace, ev.kind, ev.from_status, ev.to_status, ev.at, ev.data "
               "FROM events ev JOIN edits ed ON ed.id = ev.edit_id WHERE ed.subject = :subject ORDER BY ev.id",
    },
    "failed_writes": {
        "title": "Failed writes and why (verification, the write guard, interrupted)",
        "sql": "SELECT id, namespace, subject, origin, reason, created_at FROM edits WHERE status = 'failed' ORDER BY id DESC",
    },
    "edits_per_namespace": {
        "title": "Edits per namespace and status",
        "sql": "SELECT namespace, status, COUNT(*) AS edits FROM edits GROUP BY namespace, status ORDER BY namespace, status",
    },
    "recent_events": {
        "title": "The last 100 events",
        "sql": "SELECT id, edit_id, kind, from_status, to_status, at, data FROM events ORDER BY id DESC LIMIT 100",
    },
}


def audit_metadata(database: str = "ledger") -> dict:
    """Datasette metadata: the canned queries, and a title saying the view is read-only."""
    return {"title": "rose-memory ledger (read-only)",
            "databases": {database: {"queries": AUDIT_QUERIES}}}


def serve_command(ledger: Path, metadata: Path, host: str, port: int) -> list[str]:
    """The Datasette command line. The file is opened as Datasette opens a mutable database, with
    SQLite's mode=ro (the memory may go on writing; Datasette never does)."""
    return [sys.executable, "-m", "datasette", "serve", str(ledger), "--metadata", str(metadata),
            "--host", host, "--port", str(port)]


def cmd_ledger_serve(args) -> int:
    import importlib.util
    import subprocess
    import tempfile

    home = _existing(args)
    if importlib.util.find_spec("datasette") is None:
        raise RoseMemoryError("Datasette is not installed; pip install 'rose-memory[audit]' (or datasette)")
    with tempfile.TemporaryDirectory(prefix="rose-memory-audit-") as tmp:
        metadata = Path(tmp) / "metadata.json"
        metadata.write_text(json.dumps(audit_metadata(), indent=2))
        stage(f"serving {home / 'ledger.sqlite'} read-only on http://{args.host}:{args.port}/ledger (Ctrl-C stops)",
              progress_on(args))
        try:
            return subprocess.call(serve_command(home / "ledger.sqlite", metadata, args.host, args.port))
        except KeyboardInterrupt:
            return 0


def cmd_consolidate(args) -> int:
    from .eval.cli import parse_sleep_settings

    settings = parse_sleep_settings(args.sleep_settings)  # checked before the model loads
    namespace = _namespace(args)
    with _open(args, **({"sleep": settings} if settings else {})) as mem:
        records = mem.consolidate(subject=args.subject, namespace=namespace, again=args.again)
    lines = []
    for r in records:
        passed = sum(f["stage"] == "consolidated" for f in r.facts)
        lines.append(f"sleep {r.edit_id} {r.status}: {r.subject}, {passed} of {len(r.facts)} facts consolidated"
                     + (f", wake edits {', '.join(map(str, r.replaced))} removed" if r.replaced else "")
                     + (f", {', '.join(map(str, r.kept_awake))} kept" if r.kept_awake else "")
                     + f"; held-out questions before {r.recall_before.get('held_out', 0):.2f}, "
                     f"after {r.recall_after.get('held_out', 0):.2f} ({r.seconds:.0f} s)"
                     + (f" ({r.reason})" if r.reason else ""))
    _emit(args, [r.model_dump() for r in records],
          "\n".join(lines) or "nothing new to consolidate (every subject slept since its last write; --again sleeps them again)")
    return 0


def cmd_export(args) -> int:
    namespace = _namespace(args)
    _existing(args)  # an export of nothing must not create a home or load the model
    with _open(args) as mem:
        if args.lora:
            report = mem.export_lora(args.lora, max_rank=args.max_rank, namespace=namespace)
            text = (f"LoRA adapter (rank {report['rank']}, {len(report['modules'])} modules) written to {report['path']}; "
                    + (f"SVD-truncated, max relative error {report['max_relative_error']:.2e}"
                       if report["truncated"] else "exact"))
        else:
            report = {"path": str(mem.export_merged(args.merged, namespace=namespace))}
            text = f"merged model written to {report['path']}"
    _emit(args, report, text)
    return 0
