"""Two eval runs of one method, probe by probe: per metric, the probes both answered and how many
each got right alone.

Two runs' scores differ by a few probes out of hundreds; the probes that changed tell a setting's
effect from the noise of a different sampled draw. Probes are matched on (subject, metric,
prompt, target), on the subjects both runs wrote (a `--limit` run against a whole-split one).

    python benchmarks/pair_runs.py docs/results/dev_batch_sleep_whole_3e4ccf3_seed1/answers.jsonl.gz \
        runs/new/answers.jsonl --method rose
"""

from __future__ import annotations

import argparse
import json

from locality_misses import read_answers


def read(path: str, method: str) -> dict[tuple, bool]:
    """One method's probes of an answers file: (subject, metric, prompt, target) -> right."""
    return {(r["subject"], r["metric"], r["prompt"], json.dumps(r.get("target"))): bool(r["hit"])
            for r in read_answers(path) if r["method"] == method}


def paired(a: dict[tuple, bool], b: dict[tuple, bool]) -> dict[str, dict[str, int]]:
    """Per metric: probes in both, right in A, right in B, right in A only, right in B only."""
    out: dict[str, dict[str, int]] = {}
    for k in sorted(a.keys() & b.keys()):
        m = out.setdefault(k[1], {"probes": 0, "a": 0, "b": 0, "a only": 0, "b only": 0})
        m["probes"] += 1
        m["a"] += a[k]
        m["b"] += b[k]
        m["a only"] += a[k] and not b[k]
        m["b only"] += b[k] and not a[k]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", help="an eval --answers file (.jsonl or .jsonl.gz)")
    p.add_argument("b", help="another, of the same benchmark file")
    p.add_argument("--method", required=True, help="the method compared (as the files name it)")
    p.add_argument("--method-b", help="the method's name in B, when it differs")
    args = p.parse_args(argv)
    a, b = read(args.a, args.method), read(args.b, args.method_b or args.method)
    if not a or not b:
        raise SystemExit(f"no answers of that method in {'A' if not a else 'B'}")
    print(json.dumps(paired(a, b), indent=1))


if __name__ == "__main__":
    main()
