"""The write guard on real facts: each subject of a benchmark file written through a memory with
the guard on (its defaults), one write per subject, each in a fresh home; how many were refused
and how many canary answers each write changed. The guard should refuse none of these.

    python benchmarks/guard_dev.py benchmarks/data/same_subject_dev.jsonl [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from rose_memory.eval.data import load_benchmark
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_cached


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="a benchmark file (same_subject_dev.jsonl format)")
    p.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    p.add_argument("--json", metavar="OUT", help="write the per-subject figures here")
    args = p.parse_args(argv)
    subjects = load_benchmark(args.data)[: args.limit]
    lm = load_cached()
    rows = []
    for s in subjects:
        with tempfile.TemporaryDirectory() as home, ParametricMemory(home, model=lm, policy={"enabled": False}) as mem:
            rec = mem.write(s.name, [(f.prompt, f.target) for f in s.facts])
            metrics = mem.ledger.get(rec.edit_id).get("metrics") or {}
            guard = (json.loads(metrics) if isinstance(metrics, str) else metrics).get("guard", {})
            rows.append({"subject": s.name, "status": rec.status, "reason": rec.reason,
                         "canaries_changed": guard.get("changed"), "canaries": guard.get("canaries")})
            mem.forget(rec.edit_id) if rec.status == "applied" else None
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    refused = [r for r in rows if r["reason"] and r["reason"].startswith("write guard")]
    total = {"subjects": len(rows), "refused_by_guard": len(refused),
             "failed_other": sum(r["status"] != "applied" for r in rows) - len(refused),
             "max_changed": max((r["canaries_changed"] or 0 for r in rows), default=0)}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"total": total, "subjects": rows}, fh, indent=1)
    print(json.dumps(total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
