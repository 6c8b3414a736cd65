"""Which sleeps a consolidation policy starts when a benchmark's facts are written one at a time
(the eval's sequential mode), and how many subjects end with a live sleep delta.

Runs in seconds: the tiny model writes, and every sleep is replaced by one that is kept and
changes nothing, so only the policy's schedule and the ledger's bookkeeping are measured (what a
sleep recalls is measured by `rose-memory eval`). The re-verification trigger is off here, since
it reads the tiny model's recall.

    python benchmarks/policy_schedule.py [--data FILE] [--set writes_per_subject=3 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch
from pydantic import ValidationError

import rose_memory.consolidation as C
from rose_memory.editing.delta import Delta
from rose_memory.errors import RoseMemoryError
from rose_memory.eval.cli import parse_pairs
from rose_memory.eval.data import load_benchmark
from rose_memory.memory import ParametricMemory
from rose_memory.sleep import SleepOutcome
from rose_memory.tiny import save_tiny_model, tiny_home


def kept_sleep(lm, reqs, groups, set_weights, cfg, progress=False, on_step=None, remembered=()) -> SleepOutcome:
    """A sleep that is kept and changes nothing: a zero delta, every fact left on its wake edit."""
    name, w = next((n, p) for n, p in lm.model.named_parameters() if "down_proj" in n)
    delta = Delta({name: (torch.zeros(w.shape[0], 1), torch.zeros(w.shape[1], 1))}, method="schedule")
    set_weights([1.0] * len(groups), delta)
    facts = [{"prompt": r.prompt, "object": r.target, "stage": "wake", "before": {"edit": 1.0, "held_out": 0.5},
              "after": {"edit": 1.0, "held_out": 1.0}, "kept_answers": 0, "sentence_answers": 0, "answers": []} for r in reqs]
    return SleepOutcome(delta=delta, facts=facts, wake_scales=[1.0] * len(groups),
                        after={"edit": 1.0, "held_out": 1.0, "passed": 1.0})


def schedule(subjects: list[tuple[str, list[tuple[str, str]]]], policy: dict) -> dict:
    """Write each subject's facts one per write through a tiny-model memory with `policy`."""
    torch.set_num_threads(1)  # 32-wide matrices: a thread pool's spinning costs more than it gains
    real, C.consolidate_subject = C.consolidate_subject, kept_sleep
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home = tiny_home(tmp + "/home", save_tiny_model())
            with ParametricMemory(home, policy={"enabled": True, "recheck_every": None, **policy},
                                  limits={"max_writes_per_minute": None}) as mem:
                for name, facts in subjects:
                    for fact in facts:
                        mem.write(name, [fact])
                rows = mem.edits()
    finally:
        C.consolidate_subject = real
    sleeps = [r for r in rows if r["origin"] == "sleep"]
    live = sorted({r["subject"] for r in sleeps if r["status"] == "applied"})
    return {"policy": policy, "writes": sum(len(f) for _, f in subjects), "sleeps": len(sleeps),
            "status": {s: sum(r["status"] == s for r in sleeps) for s in sorted({r["status"] for r in sleeps})},
            "subjects": len(subjects), "ending_slept": len(live),
            "ending_awake": [n for n, _ in subjects if n not in live]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="benchmarks/data/same_subject_dev.jsonl", help="benchmark file (.jsonl)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a ConsolidationPolicy field (JSON value), e.g. --set writes_per_subject=3")
    args = ap.parse_args(argv)
    try:  # the eval's KEY=VALUE reader (JSON values, bare words strings); a misspelt field fails before any write
        policy = parse_pairs(args.set, "--set", "writes_per_subject=3")
        C.ConsolidationPolicy.model_validate(policy)
    except (RoseMemoryError, ValidationError) as err:
        ap.error(str(err))
    subjects = [(s.name, [(f.prompt, f.target) for f in s.facts]) for s in load_benchmark(args.data)]
    print(json.dumps(schedule(subjects, policy), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
