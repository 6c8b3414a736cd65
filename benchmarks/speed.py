"""Seconds per same-subject write (3 facts) and peak memory, per editing method, on one model.

    python benchmarks/speed.py [--methods rose,memit,alphaedit] [--model M] [--json OUT]

Each method runs in a fresh subprocess so its peak memory (max RSS, or CUDA peak allocation)
is its own. After the clock stops, the written model is asked one chat question per fact
(other words than the edit's); the answers go into the JSON. RoSE is also timed with its
target optimisation unbatched (one prompt per forward), with full forwards at every step
(instead of replaying only the blocks above the value layer) and with the value optimisation
under bf16 autocast (`value_bf16`, off by default); the three ratios are reported from the
same run. What every write of a method reuses (key statistics, cached on disk; RoSE's
protectors and AlphaEdit's null-space projectors, memoised per process) is computed before
the clock starts (`warm_up`), so the time is that of a write to a memory that is already up.
The JSON is written after each run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

FACTS = [
    {"subject": "Larkspur Quennell", "prompt": "{} lives in the city of", "target": "Lisbon"},
    {"subject": "Larkspur Quennell", "prompt": "{} works as a", "target": "dentist"},
    {"subject": "Larkspur Quennell", "prompt": "{}'s favorite color is", "target": "green"},
]
# Asked through the chat template after the write (outside the clock), one per fact, in words
# other than the edit's: what the written model answers, per method.
QUESTIONS = [
    ("Where does Larkspur Quennell live?", "Lisbon"),
    ("What does Larkspur Quennell do for a living?", "dentist"),
    ("Which color does Larkspur Quennell like best?", "green"),
]


def _one(model: str | None, method: str, overrides: dict, out) -> None:
    import torch

    from rose_memory.editing import edit, warm_up
    from rose_memory.eval.metrics import hit
    from rose_memory.generate import chat_prompt, generate
    from rose_memory.model import load_model

    lm = load_model(model)
    # One-off work (key statistics, cached on disk; projectors, memoised per process) before the clock.
    warm_up(lm, method, overrides or None)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    delta = edit(lm, FACTS, method=method, config=overrides or None)
    secs = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    delta.apply(lm.model)
    try:
        said = generate(lm, [chat_prompt(lm, q) for q, _ in QUESTIONS])
    finally:
        delta.revert(lm.model)
    answers = [{"question": q, "answer": a, "target": t, "hit": hit(a, t)} for (q, t), a in zip(QUESTIONS, said)]
    out.put({"method": method, "overrides": overrides, "seconds_per_write": round(secs, 2),
             "peak_mb": round(peak, 1), "peak_kind": "cuda_allocated" if torch.cuda.is_available() else "max_rss",
             "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1),
             "rank": {k.split(".")[2]: int(u.shape[1]) for k, (u, _) in delta.factors.items()},
             "answers": answers})


def run(model: str | None, method: str, overrides: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_one, args=(model, method, overrides, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="rose,memit,alphaedit")
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-unbatched", action="store_true",
                    help="skip the RoSE runs with unbatched target optimisation, full forwards and bf16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = []
    report = {"model": args.model or "embedded:smollm2-135m-instruct", "facts": len(FACTS), "results": results}

    def save() -> None:  # after every measurement, so a run cut short keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)

    for m in args.methods.split(","):
        results.append(run(args.model, m, {}))
        print(json.dumps(results[-1]), flush=True)
        save()
    if not args.no_unbatched and "rose" in args.methods.split(","):
        base = next(r for r in results if r["method"] == "rose" and not r["overrides"])["seconds_per_write"]
        # (settings, report key, printed label, variant time on top): each ratio within this run.
        variants = [({"batched": False}, "rose_batched_over_unbatched_time", "batched/unbatched", False),
                    ({"upper_only": False}, "rose_upper_only_over_full_forward_time", "upper-blocks-only/full-forward", False),
                    ({"value_bf16": True}, "rose_value_bf16_over_float32_time", "value_bf16/float32", True)]
        for overrides, key, label, variant_on_top in variants:
            res = run(args.model, "rose", overrides)
            print(json.dumps(res), flush=True)
            results.append(res)
            secs = res["seconds_per_write"]
            report[key] = round(secs / base if variant_on_top else base / secs, 3)
            print(f"rose {label} time ratio:", report[key])
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
