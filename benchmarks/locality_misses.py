"""What the locality misses of an eval run are: leaks of the written facts, or other rewordings.

Locality counts a probe as kept only if the first 8 generated tokens equal the unedited
model's. Most probes are other people's questions, which the 135M model answers by
confabulating, and such answers move under any change of the weights. This reads an
`--answers` file of `rose-memory eval` and sorts each method's missed locality probes:

- `locality file`: a prompt of the `--locality` file (world knowledge, raw or chat);
- `leak`: the answer names an object written for the subject under edit (the harm locality
  is there to catch: another person's question answered with this subject's fact);
- `name respelt`: the asked person's whole name is in one of the two answers and not in the
  other (the base model often garbles these names; an edit can garble or mend them);
- `diverges at word N`: same name handling, the answers part at word N (0, 1-2 or 3+).

With two methods (`--pair A B`), it also counts the probes kept by one and missed by the
other, so a sleep's cost can be told from its write's. With `--by-state`, each model state's
locality in the run's order (the subject after whose writes it was measured): in sequential
mode, how locality falls as edits accumulate, and the locality file's share of it. With
`--by-asked`, the misses by the person each probe asks about (whatever subject was edited), and
how many prompts miss in none, some, or at least half of the states they are asked in: whether a
method's misses are spread over everyone or come back on a few fragile answers.

    python benchmarks/locality_misses.py docs/results/dev_batch_sleep_whole_3e4ccf3_seed1/answers.jsonl.gz \
        --data ../shared/benchmark/same_subject_dev.jsonl --pair rose rose+consolidate
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys

from rose_memory.eval.data import load_benchmark


def read_answers(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def asked_about(row: dict, names: list[str]) -> str | None:
    """The person a locality probe asks about; None for a prompt of the locality file. Locality
    probes never ask about the subject under edit: its name in a prompt is context."""
    return next((n for n in names if n != row["subject"] and n in row["prompt"]), None)


def kind_of(row: dict, objects: dict[str, list[str]], names: list[str]) -> str:
    """One missed locality probe's kind (see the module's docstring)."""
    name = asked_about(row, names)
    if name is None:
        return "locality file"
    answer, before = row["answer"], row["target"]
    if any(o.lower() in answer.lower() and o.lower() not in before.lower()
           for o in objects.get(row["subject"], [])):
        return "leak"
    if (name in before) != (name in answer):
        return "name respelt"
    a, b = before.split(), answer.split()
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return "diverges at word " + ("0" if k == 0 else "1-2" if k < 3 else "3+")


def by_state(probes: list[dict], names: list[str]) -> list[dict]:
    """Per state in the run's order: probes kept, and the locality file's prompts among them."""
    states: dict[str, list[int]] = {}
    for r in probes:
        kept = states.setdefault(r["subject"], [0, 0, 0, 0])
        in_file = asked_about(r, names) is None
        kept[0] += r["hit"]
        kept[1] += 1
        kept[2] += r["hit"] and in_file
        kept[3] += in_file
    return [{"after": s, "kept": k[0], "probes": k[1], "locality": round(k[0] / k[1], 3),
             "file kept": k[2], "file probes": k[3]} for s, k in states.items()]


def by_asked(probes: list[dict], names: list[str]) -> dict:
    """Misses per person asked (most missed first; "locality file" for its prompts), and the prompts
    by the share of their states in which they miss."""
    asked: dict[str, list[int]] = {}
    prompts: dict[str, list[int]] = {}
    for r in probes:
        who = asked_about(r, names) or "locality file"
        for key, table in ((who, asked), (r["prompt"], prompts)):
            t = table.setdefault(key, [0, 0])
            t[0] += not r["hit"]
            t[1] += 1
    shares = {p: m / n for p, (m, n) in prompts.items()}
    often = [p for p, s in shares.items() if s >= 0.5]
    misses = sum(m for m, _ in prompts.values())
    return {"asked": [{"asked": a, "missed": m, "probes": n} for a, (m, n) in
                      sorted(asked.items(), key=lambda kv: (-kv[1][0] / kv[1][1], kv[0]))],
            "prompts missed in no state": sum(s == 0 for s in shares.values()),
            "in some": sum(0 < s < 0.5 for s in shares.values()),
            "in at least half": len(often),
            "share of the misses from those": round(sum(prompts[p][0] for p in often) / misses, 3) if misses else 0.0}


def summarize(rows: list[dict], data: str, pair: tuple[str, str] | None = None, states: bool = False,
              asked: bool = False) -> dict:
    subjects = load_benchmark(data)
    objects = {s.name: [f.target for f in s.facts] for s in subjects}
    names = [s.name for s in subjects]
    loc = [r for r in rows if r.get("metric") == "locality"]
    if not loc:
        raise SystemExit("no locality rows in this answers file (was the eval run with --locality?)")
    out: dict = {"methods": {}}
    by_method: dict[str, dict] = collections.defaultdict(dict)
    for r in loc:
        by_method[r["method"]][(r["subject"], r["prompt"])] = r
    for method, probes in by_method.items():
        kinds = collections.Counter(kind_of(r, objects, names) for r in probes.values() if not r["hit"])
        out["methods"][method] = {"probes": len(probes), "kept": sum(r["hit"] for r in probes.values()),
                                  "misses": dict(kinds.most_common())}
        if states:
            out["methods"][method]["by state"] = by_state(list(probes.values()), names)
        if asked:
            out["methods"][method]["by asked"] = by_asked(list(probes.values()), names)
    if pair:
        a, b = (by_method.get(m) for m in pair)
        if a is None or b is None:
            raise SystemExit(f"--pair: the file has methods {sorted(by_method)}")
        both = a.keys() & b.keys()
        out["pair"] = {
            "probes": len(both),
            f"kept by {pair[0]} only": sum(a[k]["hit"] and not b[k]["hit"] for k in both),
            f"kept by {pair[1]} only": sum(b[k]["hit"] and not a[k]["hit"] for k in both),
            "missed by both": sum(not a[k]["hit"] and not b[k]["hit"] for k in both),
            f"new misses of {pair[1]}": dict(collections.Counter(
                kind_of(b[k], objects, names) for k in both if a[k]["hit"] and not b[k]["hit"]).most_common()),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("answers", help="an eval --answers file (.jsonl or .jsonl.gz)")
    p.add_argument("--data", required=True, help="the benchmark file the run wrote (for names and objects)")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), help="two methods of the file, compared probe by probe")
    p.add_argument("--by-state", action="store_true",
                   help="also each model state's locality in the run's order (sequential mode: as edits accumulate)")
    p.add_argument("--by-asked", action="store_true",
                   help="also the misses by the person asked, and how often each prompt misses across the states")
    args = p.parse_args(argv)
    json.dump(summarize(read_answers(args.answers), args.data, tuple(args.pair) if args.pair else None,
                        args.by_state, args.by_asked), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
