"""Replay a memory home's ledger edit by edit and ask the subjects' probes after each sleep: which
write or sleep wore which subject's facts away.

A memory keeps every delta it applied and, per ledger row, what replaced it (`superseded_by`,
`consolidated_into`). Applying the rows in order, each removing the rows it replaced, rebuilds
the weights as they were after every write and sleep. After each sleep row that was kept (and
after the last row) this asks each written subject's efficacy prompts (raw text) and questions
(chat template) from a benchmark file, scored as `rose-memory eval` scores them, and prints one
line per state. Rows that never took effect (failed, pending) are skipped; a forgotten row is
left out from the start (the ledger does not say when it left).

With `--locality` it also asks, at each of those states and at the last write before each round of
sleeps, the questions of the data file's subjects not yet told (as the eval's sequential locality
does), kept when the first 8 tokens equal the unedited model's: which writes and which sleeps moved
other people's answers.

    python benchmarks/ledger_replay.py runs/seq/checkpoint/memory-rose-consolidate \
        --data benchmarks/data/same_subject_dev.jsonl --subjects 4

The sequential eval's `--checkpoint DIR` keeps such a home in `DIR/memory-<method>/`.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

import torch

LANDED = ("applied", "superseded", "consolidated")


def states(rows: list[dict]) -> list[tuple[dict, list[int]]]:
    """(row, ids live once it landed) for each row that took effect, in ledger order."""
    live: list[int] = []
    out = []
    for r in sorted(rows, key=lambda r: r["id"]):
        if r["status"] not in LANDED or not r.get("delta_file"):
            continue
        live = [i for i in live if not any(q["id"] == i and r["id"] in (q["superseded_by"], q["consolidated_into"])
                                           for q in rows)]
        live.append(r["id"])
        out.append((r, list(live)))
    return out


def read_rows(home: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{home / 'ledger.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM edits ORDER BY id")]
    finally:
        db.close()


def probed(rows: list[dict], before_sleeps: bool = False) -> set[int]:
    """Indexes of the states to ask: each sleep, the last row, and with `before_sleeps` the row before
    each run of sleeps (so that a round's change can be told from the writes' before it)."""
    last = len(rows) - 1
    return {k for k, r in enumerate(rows)
            if r["origin"] == "sleep" or k == last
            or (before_sleeps and k < last and rows[k + 1]["origin"] == "sleep")}


def add(params: dict, base: dict, delta) -> None:
    """Add `delta` to the weights, first keeping each touched weight's value in `base` (a state is undone
    by copying `base` back: subtracting again, as Delta.revert does, leaves rounding in the weights)."""
    with torch.no_grad():
        for name in delta.factors:
            if name not in params:
                raise SystemExit(f"the model has no {name!r}: was the memory written with another model?")
            w = params[name]
            base.setdefault(name, w.detach().clone())
            upd = delta.matrix(name)
            w.add_((upd if upd.shape == w.shape else upd.T).to(w.device, w.dtype))


def restore(params: dict, base: dict) -> None:
    """Copy the kept values of the touched weights back (see `add`)."""
    with torch.no_grad():
        for name, w in base.items():
            params[name].copy_(w)


def replay(home: str, data: str, n_subjects: int | None = None, model: str | None = None,
           locality: bool = False) -> list[dict]:
    from rose_memory.eval.data import load_benchmark
    from rose_memory.eval.generate import decode, encode, render
    from rose_memory.eval.metrics import LOCALITY_TOKENS, hit, same_start
    from rose_memory.eval.runner import MAX_NEW_TOKENS, locality_probes, main_probes
    from rose_memory.generate import generate_ids
    from rose_memory.model import load_cached
    from rose_memory.stores.deltas import load_delta

    root = Path(home)
    rows = read_rows(root)
    if not rows:
        raise SystemExit(f"{home}: the ledger has no rows")
    written = list(dict.fromkeys(r["subject"] for r in rows if r["origin"] != "sleep"))
    bench = {s.name: s for s in load_benchmark(data)}
    asked = [bench[n] for n in written if n in bench][:n_subjects]
    if not asked:
        raise SystemExit(f"none of the memory's subjects is in {data}")
    lm = load_cached(model)
    config = json.loads((root / "config.json").read_text()) if (root / "config.json").exists() else {}
    if model is None and config.get("model") not in (None, "", lm.name):
        print(f"note: the memory was written with {config.get('model')!r}; replaying on {lm.name!r}", file=sys.stderr)
    def ask(probes, tokens):
        return generate_ids(lm, [encode(lm, render(lm, p.text, p.chat), p.chat) for p in probes], max_new_tokens=tokens)

    strangers = []  # locality: the unedited model's answers to every subject's questions, asked before any row
    if locality:
        probes = locality_probes([], list(bench.values()), LOCALITY_TOKENS)
        strangers = list(zip(probes, ask(probes, LOCALITY_TOKENS)))
    deltas: dict[int, object] = {}
    params = dict(lm.model.named_parameters())
    base: dict[str, torch.Tensor] = {}  # the touched weights as they were: each state is rebuilt from them
    out = []
    timeline = states(rows)
    asked_at = probed([r for r, _ in timeline], before_sleeps=locality)
    try:
        for k, (row, live) in enumerate(timeline):
            if k not in asked_at:
                continue
            restore(params, base)
            for i in live:
                if i not in deltas:
                    r = next(q for q in rows if q["id"] == i)
                    deltas[i] = load_delta(root / "deltas" / r["delta_file"], r["delta_sha256"])
                add(params, base, deltas[i])
            told = {r["subject"] for r in rows if r["id"] <= row["id"]}
            probes = [p for s in asked if s.name in told for p in main_probes(s) if p.metric in ("efficacy", "instruction")]
            answers = [decode(lm, a) for a in ask(probes, MAX_NEW_TOKENS)]
            per: dict[str, dict[str, list[int]]] = {}
            for p, a in zip(probes, answers):
                got = per.setdefault(p.subject, {}).setdefault(p.metric, [0, 0])
                got[0] += hit(a, p.target)
                got[1] += 1
            state = {"row": row["id"], "origin": row["origin"], "subject": row["subject"], "live": len(live), "recall": per}
            if locality:  # the questions of the subjects not yet told, as the eval's sequential locality asks them
                asked_now = [(p, ref) for p, ref in strangers if p.subject not in told]
                now = ask([p for p, _ in asked_now], LOCALITY_TOKENS) if asked_now else []
                state["strangers"] = [sum(same_start(ref, a) for (_, ref), a in zip(asked_now, now)), len(asked_now)]
            out.append(state)
    finally:
        restore(params, base)  # the model is the process's cached one: leave it exactly as it was, whatever happened
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("home", help="a memory home (its ledger.sqlite and deltas/)")
    p.add_argument("--data", required=True, help="the benchmark file whose facts were written (for the probes)")
    p.add_argument("--subjects", type=int, default=None, help="ask only the first N subjects written")
    p.add_argument("--model", default=None, help="the model the memory was written with (default: the embedded one)")
    p.add_argument("--locality", action="store_true",
                   help="also ask the questions of the subjects not yet told (kept: the first 8 tokens as the unedited "
                        "model's), before and after each round of sleeps")
    p.add_argument("--json", action="store_true", help="print the states as JSON")
    args = p.parse_args(argv)
    out = replay(args.home, args.data, args.subjects, args.model, locality=args.locality)
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
        return
    for s in out:
        cells = " ".join(f"{name.split()[0]} {m['efficacy'][0]}/{m['efficacy'][1]} {m['instruction'][0]}/{m['instruction'][1]}"
                         for name, m in s["recall"].items())
        loc = f" | strangers {s['strangers'][0]}/{s['strangers'][1]}" if "strangers" in s else ""
        print(f"row {s['row']:>4} {s['origin']:<7} {s['subject'][:18]:<18} live {s['live']:>3} | {cells}{loc}")


if __name__ == "__main__":
    main()
