"""Real SIGKILLs at random moments of a stream of writes and forgets (tiny random model), then recovery.

Each trial starts a child process that opens the home and writes, supersedes and forgets in a
loop over two namespaces until it is killed; the parent sends SIGKILL at a random moment, reads
whether the kill caught a write in flight (a `pending` row), reopens the home and checks that
`verify()` passes, no row is pending, no half-written file is left, and each namespace's weights
equal base + its applied deltas (bit for bit, composed as the memory composes them).

    python benchmarks/crash_kill.py --trials 20 [--json out.json]

Tests kill at each named point (tests/test_crash.py); this covers the moments between them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent("""
    import random, sys
    from rose_memory.memory import ParametricMemory

    home, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    with ParametricMemory(home) as mem:
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            ns = rng.choice(["default", "alice"])
            applied = mem.edits(status="applied", namespace=ns)
            roll = rng.random()
            if applied and roll < 0.2:
                mem.forget(rng.choice(applied)["id"], namespace=ns)
            elif applied and roll < 0.4:   # supersede one fact of a live subject
                mem.write(rng.choice(applied)["subject"], [("lives in the city of", f"City {seed}-{i}")], namespace=ns)
            else:
                mem.write(f"Person {seed}-{i}", [("lives in the city of", f"City {i}"), ("works as a", "baker")],
                          namespace=ns)
""")



def check(home: Path, lm, base: dict) -> list[str]:
    """Reopen the home after a kill; the problems found (empty: recovered)."""
    import torch

    from rose_memory.memory import ParametricMemory
    from rose_memory.tiny import base_plus

    problems = []
    with ParametricMemory(home, model=lm) as mem:
        problems += mem.verify()
        rows = mem.edits()
        problems += [f"edit {r['id']} still pending" for r in rows if r["status"] == "pending"]
        problems += [f"left-over {p.name}" for p in (home / "deltas").glob("*.tmp")]
        for ns in ("default", "alice"):
            mem.use(ns)
            ids = [r["id"] for r in rows if r["status"] == "applied" and r["namespace"] == ns]
            if list(mem.live) != ids:
                problems.append(f"{ns}: live {list(mem.live)} != applied {ids}")
            want = base_plus(base, [mem.live[i] for i in ids if i in mem.live])
            params = dict(mem.lm.model.named_parameters())
            bad = [n for n in want if not torch.equal(params[n], want[n])]
            if bad:
                problems.append(f"{ns}: weights differ from base + applied deltas in {bad[:3]}")
    return problems


def pending_rows(home: Path) -> int:
    from rose_memory.stores.ledger import Ledger

    ledger = Ledger(home / "ledger.sqlite")
    try:
        return len(ledger.rows(status="pending"))
    finally:
        ledger.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--max-delay", type=float, default=3.0, help="kill up to this many seconds after the child is ready")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from rose_memory.memory import ParametricMemory
    from rose_memory.model import load_model
    from rose_memory.tiny import save_tiny_model, tiny_home

    torch.set_num_threads(1)
    model_dir = save_tiny_model()
    lm = load_model(str(model_dir))
    base = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    rng = random.Random(args.seed)
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    results = []
    with tempfile.TemporaryDirectory(prefix="rose-crash-kill-") as tmp:
        home = tiny_home(Path(tmp) / "home", model_dir, limits={"max_writes_per_minute": None})
        with ParametricMemory(home, model=lm) as mem:  # warm the statistics cache; one edit to start from
            mem.write("Aurelio", [("lives in the city of", "Warsaw")])
        for trial in range(args.trials):
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(home), str(args.seed * 1000 + trial)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            ready = child.stdout.readline().strip() == "ready"
            delay = rng.uniform(0.0, args.max_delay)
            time.sleep(delay)
            alive = child.poll() is None
            child.send_signal(signal.SIGKILL)
            child.wait()
            err = child.stderr.read()
            in_flight = pending_rows(home)
            start = time.perf_counter()
            problems = check(home, lm, base) if ready else [f"child never got ready: {err[-500:]}"]
            if ready and not alive:
                problems.append(f"child ended before the kill: {err[-500:]}")
            results.append({"trial": trial, "delay_s": round(delay, 3), "killed_running": alive,
                            "write_in_flight": bool(in_flight), "recovered": not problems,
                            "reopen_s": round(time.perf_counter() - start, 3), "problems": problems})
            print(f"trial {trial:3d}: kill after {delay:.2f} s, {'a write in flight' if in_flight else 'between writes'}, "
                  + ("recovered" if not problems else f"NOT recovered: {problems}"), flush=True)
        with ParametricMemory(home, model=lm) as mem:
            rows = mem.edits()
    summary = {"trials": len(results), "killed_running": sum(r["killed_running"] for r in results),
               "write_in_flight": sum(r["write_in_flight"] for r in results),
               "recovered": sum(r["recovered"] for r in results), "ledger_rows": len(rows),
               "statuses": {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "trials": results}, indent=2))
    return 0 if summary["recovered"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
