"""Seconds and peak memory of one sleep (consolidation) of a subject with 3 and with 5 facts.

Each subject is written with RoSE in a fresh memory home (policy off), then `consolidate()`
runs the sleep stage; the clock covers the sleep only, and each run lists the seconds at the end
of each of the sleep's stages (from the ledger's notes). Peak resident memory is the process's
(model included), read before and after the sleep. Subjects and facts are our own.

    python benchmarks/sleep_speed.py [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time

import torch

from rose_memory.consolidation import sleep_stages
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_cached

SUBJECTS = {
    3: ("Larkspur Quennell", [("lives in the city of", "Lisbon"), ("works as a", "dentist"),
                              ("{}'s favorite color is", "green")]),
    5: ("Odalys Fenwright", [("lives in the city of", "Oslo"), ("works as a", "baker"), ("{}'s favorite color is", "red"),
                             ("has a pet", "hamster"), ("plays the", "trumpet")]),
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", metavar="OUT", help="write the figures here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_cached()
    out = {"threads": torch.get_num_threads(), "device": str(lm.device), "runs": []}
    for n, (subject, facts) in SUBJECTS.items():
        with tempfile.TemporaryDirectory() as home, ParametricMemory(home, model=lm, policy={"enabled": False}) as mem:
            t = time.perf_counter()
            mem.write(subject, facts)
            write_s = time.perf_counter() - t
            before = peak_mb()
            t = time.perf_counter()
            (rec,) = mem.consolidate(subject)
            sleep_s = time.perf_counter() - t
            run = {"facts": n, "write_s": round(write_s, 1), "sleep_s": round(sleep_s, 1),
                   "peak_rss_mb_before": round(before), "peak_rss_mb_after": round(peak_mb()), "status": rec.status,
                   "consolidated": sum(f["stage"] == "consolidated" for f in rec.facts), "stages": sleep_stages(mem.ledger.events(rec.edit_id))}
            out["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
