"""Time to open a memory holding N applied edits (default 100): ledger read, delta files read and
checked, weights recomposed. The edits are small random deltas written straight through the
ledger and the delta store (shaped like RoSE edits: rank 2 on the MLP output of layers 3..8),
so the benchmark needs no editing run.

    python benchmarks/open_memory.py [--edits 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rose_memory.editing.delta import Delta
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_cached
from rose_memory.stores.deltas import DeltaStore
from rose_memory.stores.ledger import Ledger


def fill(home: Path, lm, n: int, layers=range(3, 9), rank: int = 2) -> None:
    ledger, store = Ledger(home / "ledger.sqlite"), DeltaStore(home / "deltas")
    params = dict(lm.model.named_parameters())
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        factors = {}
        for layer in layers:
            d_out, d_in = params[f"model.layers.{layer}.mlp.down_proj.weight"].shape
            factors[f"model.layers.{layer}.mlp.down_proj.weight"] = (
                torch.randn(d_out, rank, generator=g) * 1e-4, torch.randn(d_in, rank, generator=g))
        facts = [{"prompt": "{} lives in the city of", "object": f"City{i}"}]
        eid = ledger.add(f"Person {i}", facts, "rose")
        name, sha = store.save(eid, Delta(factors, method="rose"))
        ledger.transition([(eid, "applied", {"delta_file": name, "delta_sha256": sha, "metrics": {}})])
    ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    lm = load_cached()
    print(f"model load (not part of opening): {time.perf_counter() - t:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        t = time.perf_counter()
        fill(home, lm, args.edits)
        print(f"wrote {args.edits} edits through ledger + store: {time.perf_counter() - t:.2f} s")
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            mem = ParametricMemory(home, model=lm)
            times.append(time.perf_counter() - t)
            assert len(mem.live) == args.edits
            mem.close()
        t = time.perf_counter()
        problems = Ledger(home / "ledger.sqlite").verify(home / "deltas")
        verify_s = time.perf_counter() - t
    print(f"open with {args.edits} applied edits: best {min(times):.2f} s, all {', '.join(f'{x:.2f}' for x in times)} s")
    print(f"ledger verify (hash chain + sha256 of every delta file): {verify_s:.2f} s, problems: {len(problems)}")


if __name__ == "__main__":
    main()
