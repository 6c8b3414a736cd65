"""Recall of a subject written as k separate writes, before and after its sleep (consolidation).

Each subject's k facts are written one write each (automatic consolidation off), then
`consolidate(subject)` runs the sleep stage (docs/sleep.md). Recall is the sleep's gate on all
k facts: the edit's own wording ("edit") and the questions held back from training ("held_out"),
before (wake edits alone) and after.

    python benchmarks/consolidation.py [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from rose_memory.memory import ParametricMemory
from rose_memory.model import load_cached

SUBJECTS = {
    "Aurelio Bianchi": [("lives in the city of", "Warsaw"), ("{}'s favorite color is", "brown"),
                        ("works as a", "carpenter")],
    "Mirela Kostova": [("was born in the city of", "Lisbon"), ("plays the", "violin"),
                       ("{}'s pet is a", "parrot")],
}
KEYS = ("edit", "held_out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--method", default="rose")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_cached()
    results = []
    with tempfile.TemporaryDirectory() as home:
        with ParametricMemory(home, model=lm, method=args.method, policy={"enabled": False}) as mem:
            for subject, facts in SUBJECTS.items():
                t = time.perf_counter()
                writes = [mem.write(subject, [fact]) for fact in facts]
                write_s = time.perf_counter() - t
                t = time.perf_counter()
                (rec,) = mem.consolidate(subject)
                results.append({
                    "subject": subject, "k": len(facts), "write_status": [w.status for w in writes],
                    "before": {k: rec.recall_before[k] for k in KEYS}, "after": {k: rec.recall_after[k] for k in KEYS},
                    "consolidation": rec.status, "reason": rec.reason,
                    "write_s": round(write_s, 1), "consolidate_s": round(time.perf_counter() - t, 1),
                    "facts": rec.facts,
                })
                r = results[-1]
                print(f"{subject}: k={r['k']} separate writes {r['write_status']}; "
                      + ", ".join(f"{k} {r['before'][k]:.2f} -> {r['after'][k]:.2f}" for k in KEYS)
                      + f"; consolidation {rec.status}" + (f" ({rec.reason})" if rec.reason else ""), flush=True)
            assert mem.verify() == []
    n = len(results)
    print("mean over subjects: " + ", ".join(
        f"{k} {sum(r['before'][k] for r in results) / n:.2f} -> {sum(r['after'][k] for r in results) / n:.2f}" for k in KEYS))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
