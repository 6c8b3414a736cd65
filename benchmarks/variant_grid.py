"""RoSE variants side by side on a benchmark file, many seeds, with worker processes sharing a GPU.

    python benchmarks/variant_grid.py --data FILE --locality FILE --out DIR \\
        --variant default --variant restate:relation_question=restate,flat_noise=0.3 \\
        [--seeds 0,1] [--workers 14] [--device cuda] [--dtype float32] [--limit-seconds 450]

A job is one (variant, seed, subject): batch mode, one subject written from the clean model
with `rose`, scored exactly as `rose-memory eval` scores it (the eval's Runner on a one-subject
file: locality here is the locality file's prompts only, without the other subjects'
questions). Jobs run in worker processes that load the model once and take jobs from a queue
folder until it is empty or the time limit is reached; each finished job is one JSON file, so
a run cut short keeps what it measured; run the same command on the same --out to go on with
the jobs left (`plan.json` records the grid, and another grid on that folder is refused).
Seed 0 of every variant runs before seed 1. The
summary compares variants on the jobs that every variant finished, question by question
against the first variant (how many answered by both, by only one).

Why: a write is many small launches, so one eval process leaves a GPU idle much of the time
(our reading, not profiled); 14 processes on an H200 held it at 100% utilisation and finished
216 one-subject jobs in 12 minutes (commit 981c2ca, 2026-11-26), several dev-split runs' worth.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The runner's METRICS but fluency: the summary pools per-probe hits from the jobs' records, and
# fluency is a ratio per run, not a hit per probe.
METRICS = ("efficacy", "generalization", "instruction", "confusion", "locality", "name_fidelity")


def parse_variant(text: str) -> tuple[str, dict]:
    from rose_memory.eval.cli import parse_settings

    name, _, settings = text.partition(":")
    if not name:
        raise SystemExit(f"--variant {text!r}: give NAME or NAME:KEY=VALUE,KEY=VALUE")
    return name, parse_settings([s for s in settings.split(",") if s])


def plan(args, qdir: Path) -> int:
    from rose_memory.eval.data import load_benchmark

    n = len(load_benchmark(args.data))
    qdir.mkdir(parents=True, exist_ok=True)
    i = 0
    for seed in args.seeds:
        for s in range(n):
            for name, _ in args.variants:
                (qdir / f"{i:05d}__{name}__{seed}__{s}").touch()
                i += 1
    return i


def plan_record(args) -> dict:
    """What a queue was planned from; a later run on the same --out must ask for the same."""
    return {"data": str(args.data), "locality": str(args.locality), "seeds": list(args.seeds),
            "variants": [[n, v] for n, v in args.variants], "model": args.model, "dtype": args.dtype}


def check_plan(out: Path, record: dict) -> None:
    """Write the plan on the first run; refuse a continuation that asks for another grid."""
    path = out / "plan.json"
    if not path.exists():
        path.write_text(json.dumps(record, indent=1))
        return
    old = json.loads(path.read_text())
    diff = sorted(k for k in record if old.get(k) != record[k])
    if diff:
        raise SystemExit(f"{out} holds a grid planned with other {', '.join(diff)} ({path}); "
                         "give the same ones to continue it, or another --out")


def work(args, qdir: Path, rdir: Path) -> None:
    import torch

    from rose_memory.eval.data import load_benchmark, load_locality
    from rose_memory.eval.runner import Runner
    from rose_memory.model import load_cached

    torch.set_num_threads(args.threads)
    lm = load_cached(args.model, args.device, args.dtype)
    subjects, loc = load_benchmark(args.data), load_locality(args.locality)
    settings = dict(args.variants)
    deadline = time.time() + args.limit_seconds
    clean = None   # the unedited model's answers and perplexity: the same for every job (each job reverts its edit)
    while time.time() < deadline:
        jobs = sorted(os.listdir(qdir))
        if not jobs:
            return
        try:  # claim the job: a rename succeeds for one worker only
            os.rename(qdir / jobs[0], rdir / (jobs[0] + ".claimed"))
        except OSError:
            continue
        _, name, seed, s = jobs[0].split("__")
        t = time.time()
        runner = Runner(lm, [subjects[int(s)]], loc, mode="batch", seed=int(seed), progress=False,
                        keep_records=True, edit_config=settings[name])
        if clean is not None:
            runner.answerer, runner.ppl_before = clean
        r = runner.run(["rose"])[0]
        clean = runner.answerer, runner.ppl_before
        out = {"variant": name, "settings": settings[name], "seed": int(seed), "subject": int(s),
               "metrics": r.metrics, "n_probes": r.n_probes, "seconds_per_write": r.seconds_per_write,
               "records": r.records}
        tmp = rdir / (jobs[0] + ".json.tmp")
        tmp.write_text(json.dumps(out))
        tmp.rename(rdir / (jobs[0] + ".json"))
        print(jobs[0], f"{time.time() - t:.1f} s", f"instruction {r.metrics['instruction']}", flush=True)


def summarise(rdir: Path, names: list[str]) -> dict:
    done = {}
    for f in rdir.glob("*.json"):
        d = json.loads(f.read_text())
        done[(d["variant"], d["seed"], d["subject"])] = d
    common = sorted({(k[1], k[2]) for k in done if all((n, k[1], k[2]) in done for n in names)})
    rows, hits = {}, {}
    for n in names:
        acc = collections.defaultdict(list)
        for seed, s in common:
            for rec in done[(n, seed, s)]["records"]:
                if rec["hit"] is not None:
                    acc[rec["metric"]].append(bool(rec["hit"]))
        hits[n] = {(seed, s, rec["prompt"]): bool(rec["hit"]) for seed, s in common
                   for rec in done[(n, seed, s)]["records"] if rec["metric"] == "instruction"}
        spw = [done[(n, seed, s)]["seconds_per_write"] for seed, s in common]
        rows[n] = {"metrics": {m: sum(acc[m]) / len(acc[m]) if acc[m] else None for m in METRICS},
                   "n_probes": {m: len(acc[m]) for m in METRICS},
                   "seconds_per_write": sum(spw) / len(spw) if spw else None}
    base = names[0]
    for n in names[1:]:
        a, b = hits[n], hits[base]
        rows[n]["instruction_vs_first"] = {"both": sum(a[k] and b[k] for k in b),
                                           "only_this": sum(a[k] and not b[k] for k in b),
                                           "only_first": sum(b[k] and not a[k] for k in b)}
    return {"jobs_done": len(done), "jobs_compared": len(common), "seeds_subjects": common, "variants": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--locality", required=True)
    p.add_argument("--out", required=True, help="folder: queue, one JSON per job, summary.json")
    p.add_argument("--variant", action="append", required=True, dest="variants", type=parse_variant,
                   help="NAME or NAME:KEY=VALUE,KEY=VALUE (EditConfig settings); the first is the reference")
    p.add_argument("--seeds", default="0,1", type=lambda v: [int(x) for x in v.split(",")])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--limit-seconds", type=float, default=float("inf"), help="workers take no job after this")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n for n, _ in args.variants]
    if len(set(names)) != len(names):
        raise SystemExit("--variant names must differ")
    out = Path(args.out)
    qdir, rdir = out / "queue", out / "jobs"
    if args.worker:
        work(args, qdir, rdir)
        return 0
    rdir.mkdir(parents=True, exist_ok=True)
    check_plan(out, plan_record(args))
    if not qdir.exists():
        print("jobs", plan(args, qdir), flush=True)
    argv = list(argv if argv is not None else sys.argv[1:])
    procs = []
    for i in range(args.workers):
        # Own statistics cache per worker: no two processes write the same cache file.
        env = {**os.environ, "ROSE_MEMORY_CACHE": str(out / f"cache{i}"), "OMP_NUM_THREADS": str(args.threads)}
        with open(out / f"worker{i}.log", "a") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, *argv, "--worker"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    for proc in procs:
        proc.wait()
    summary = summarise(rdir, names)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{summary['jobs_done']} jobs done; compared on the {summary['jobs_compared']} (seed, subject) "
          f"pairs every variant finished")
    print("| variant | " + " | ".join(METRICS) + " | s/write | instruction: both / only this / only first |")
    print("|---" * (len(METRICS) + 3) + "|")
    for n, row in summary["variants"].items():
        vs = row.get("instruction_vs_first")
        cells = [f"{row['metrics'][m]:.3f}" if row["metrics"][m] is not None else "-" for m in METRICS]
        spw = f"{row['seconds_per_write']:.1f}" if row["seconds_per_write"] is not None else "-"
        print(f"| {n} | " + " | ".join(cells) + f" | {spw} | "
              + (f"{vs['both']} / {vs['only_this']} / {vs['only_first']}" if vs else "(reference)") + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
