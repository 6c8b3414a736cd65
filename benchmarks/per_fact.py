"""Per fact and per subject, what one method of an eval run did: a Markdown table.

    python benchmarks/per_fact.py ANSWERS --data DATA [--method rose+consolidate] [--sleeps SLEEPS]

ANSWERS is an eval `--answers` file (.jsonl or .jsonl.gz), DATA the benchmark file it ran. Per
fact: its edit form answered, its questions answered (k of n), the questions about it whose answer
named another of the subject's objects (confusion), and with SLEEPS (the run's `sleeps.json`) the
sleep's gate on the fact's held-back questions before and after the sleep and the sleep delta's
scale. Per subject (batch mode): the locality probes its state missed. What a closing note on a
target needs: which facts and subjects carry a figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from locality_misses import by_state, read_answers
from rose_memory.errors import RoseMemoryError
from rose_memory.eval.data import fill, load_benchmark


def tally(rows: list[dict], method: str) -> dict:
    """{(subject, metric, object): [hits, probes]} for one method's efficacy and instruction."""
    out: dict = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["method"] != method:
            continue
        m = r["metric"]
        if m in ("efficacy", "instruction"):
            key = (r["subject"], m, r["target"])
        else:
            continue
        out[key][0] += bool(r["hit"])
        out[key][1] += 1
    return out


def confusions_by_fact(rows: list[dict], method: str) -> dict:
    """{(subject, object): confused answers}: a confusion row's prompt is the instruction row's prompt."""
    asked = {(r["subject"], r["prompt"]): r["target"] for r in rows
             if r["method"] == method and r["metric"] == "instruction"}
    out: dict = defaultdict(int)
    for r in rows:
        if r["method"] == method and r["metric"] == "confusion" and r["hit"]:
            out[(r["subject"], asked.get((r["subject"], r["prompt"]), "?"))] += 1
    return out


def sleep_figures(path: str) -> dict:
    """{(subject, object): (held-back before, after, scale)} from a run's sleeps.json."""
    with open(path) as f:
        sleeps = json.load(f)
    out = {}
    for s in sleeps:
        scale = next((c.get("scale") for c in reversed(s.get("canary") or []) if "scale" in c), None)
        for fact in s.get("facts", []):
            out[(s["subject"], fact["object"])] = (fact.get("before", {}).get("held_out"),
                                                   fact.get("after", {}).get("held_out"), scale if s.get("kept") else None)
    return out


def table(subjects, rows: list[dict], method: str, sleeps: dict | None) -> str:
    t, conf = tally(rows, method), confusions_by_fact(rows, method)
    states = by_state([r for r in rows if r["method"] == method and r["metric"] == "locality"],
                      [s.name for s in subjects])
    locality = {st["after"]: st for st in states}
    cols = ["subject", "fact", "edit form", "questions", "confused"] + (["gate before -> after", "sleep scale"] if sleeps else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    totals = defaultdict(int)
    for s in subjects:
        loc = locality.get(s.name)
        for i, f in enumerate(s.facts):
            e = t.get((s.name, "efficacy", f.target), [0, 0])
            q = t.get((s.name, "instruction", f.target), [0, 0])
            c = conf.get((s.name, f.target), 0)
            totals["questions"] += q[0]
            totals["asked"] += q[1]
            totals["confused"] += c
            cells = [s.name if i == 0 else "", f"{fill(f.prompt, '…')} {f.target}", f"{e[0]} of {e[1]}", f"{q[0]} of {q[1]}", str(c)]
            if sleeps:
                b, a, scale = sleeps.get((s.name, f.target), (None, None, None))
                cells += [f"{b} -> {a}" if b is not None else "-", "refused" if scale is None and b is not None else
                          (f"{scale:g}" if scale is not None else "-")]
            lines.append("| " + " | ".join(cells) + " |")
        if loc:
            missed = loc["probes"] - loc["kept"]
            totals["missed"] += missed
            totals["probes"] += loc["probes"]
            lines.append(f"| | locality: {missed} of {loc['probes']} missed |" + " |" * (len(cols) - 2))
    lines.append(f"\nQuestions {totals['questions']} of {totals['asked']}, confused {totals['confused']}; "
                 f"locality {totals['missed']} of {totals['probes']} missed.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("answers")
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", default="rose+consolidate")
    ap.add_argument("--sleeps", default=None, help="the run's sleeps.json (gate figures per fact)")
    args = ap.parse_args(argv)
    try:
        subjects = load_benchmark(args.data)
        rows = read_answers(args.answers)
        sleeps = sleep_figures(args.sleeps) if args.sleeps else None
    except (RoseMemoryError, OSError, json.JSONDecodeError) as err:
        print(f"per_fact: {err}", file=sys.stderr)
        return 2
    if not any(r["method"] == args.method for r in rows):
        methods = sorted({r["method"] for r in rows})
        print(f"per_fact: no answers of {args.method!r} in {args.answers}; it has {', '.join(methods)}", file=sys.stderr)
        return 2
    written = {r["subject"] for r in rows if r["method"] == args.method}
    print(table([s for s in subjects if s.name in written], rows, args.method, sleeps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
