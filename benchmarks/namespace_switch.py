"""How long switching namespace takes on a real model, and that it is exact.

A memory on the embedded model (or --model) gets --namespaces namespaces of --edits edits each.
The edits are random low-rank deltas on RoSE's layer band (the edit and its verification are
stubbed: what is measured is the switch, which only recomposes matrices from stored factors).
Each switch is timed; afterwards every namespace's weights are checked bit for bit against base
+ its deltas composed from scratch in a fresh memory.

    python benchmarks/namespace_switch.py --namespaces 3 --edits 10 --rank 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--namespaces", type=int, default=3)
    ap.add_argument("--edits", type=int, default=10, help="edits per namespace")
    ap.add_argument("--rank", type=int, default=4, help="rank of each edit per layer (a RoSE write: about its fact count)")
    ap.add_argument("--switches", type=int, default=60)
    args = ap.parse_args(argv)

    import torch

    import rose_memory.memory as M
    from rose_memory.editing.config import config_for
    from rose_memory.editing.delta import Delta
    from rose_memory.model import load_cached

    lm = load_cached(args.model)
    layers = config_for(lm.model).layers
    params = dict(lm.model.named_parameters())
    names = [n for n in params if "down_proj" in n and int(n.split(".")[2]) in layers]
    g = torch.Generator().manual_seed(0)

    def fake_edit(lm_, reqs, **kw):
        return Delta({n: (0.01 * torch.randn(params[n].shape[0], args.rank, generator=g),
                          torch.randn(params[n].shape[1], args.rank, generator=g)) for n in names}, method="rose")

    M.edit = fake_edit
    M.ParametricMemory._measure = lambda self, subject, reqs: {"edit": 1.0, "chat": 1.0, "about": 1.0, "answers": []}
    spaces = [f"user{i}" for i in range(args.namespaces)]
    with tempfile.TemporaryDirectory() as home:
        quiet = {"policy": {"enabled": False}, "guard": {"enabled": False}, "limits": {"max_writes_per_minute": None}}
        with M.ParametricMemory(home, model=lm, **quiet) as mem:
            for ns in spaces:
                for i in range(args.edits):
                    assert mem.write(f"Person {ns} {i}", [("lives in the city of", "Warsaw")], namespace=ns).status == "applied"
            seconds = []
            for k in range(args.switches):
                ns = spaces[k % len(spaces)] if k % 4 else "default"
                start = time.perf_counter()
                mem.use(ns)
                seconds.append(time.perf_counter() - start)
            after = {}
            for ns in spaces:
                mem.use(ns)
                after[ns] = {n: params[n].detach().clone() for n in names}
        with M.ParametricMemory(home, model=lm) as fresh:   # composed from scratch, one namespace each
            exact = True
            for ns in spaces:
                fresh.use(ns)
                exact &= all(torch.equal(params[n], after[ns][n]) for n in names)
            fresh.use("default")
            base_exact = all(torch.equal(params[n], fresh._base[n]) for n in names)
    out = {"model": lm.name, "device": str(lm.device), "matrices": len(names), "edits_per_namespace": args.edits,
           "rank_per_edit": args.rank, "switches": len(seconds),
           "median_ms": round(statistics.median(seconds) * 1e3, 2), "max_ms": round(max(seconds) * 1e3, 2),
           "bitwise_equal_to_a_fresh_compose": exact, "default_is_base": base_exact}
    print(json.dumps(out))
    return 0 if exact and base_exact else 1


if __name__ == "__main__":
    sys.exit(main())
