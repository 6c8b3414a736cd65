"""Where a write moves other people's questions: |dW k| per kind of token, at each edited layer.

    python benchmarks/leak_by_token.py DATA [--subject I] [--method rose] [--model M] [--set KEY=VALUE ...] [--json OUT]

Subject I of DATA (0: the first) is written with the method (the Delta computed, not applied).
Every other subject's questions go through the chat template; at each edited layer the key of
each token (the MLP output projection's input, on the model before the write: the first-order
change) is multiplied by the layer's update, and |dW k| is summed up by the token's kind:
`template` (the chat template and the words before the name), `name` (the name's inner pieces),
`name_last` (its last token, where an edit of that person would be), `after` (the question's
words after the name) and `final` (the position that answers). `own` is the same at the last
name token of the written subject's own questions, the change the write is for. The pieces that
move most are listed too. A locality miss is another person's near-tied answer tipped; this says
at which tokens the write reaches them, a few minutes a variant on 2 CPU cores, before any eval.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from rose_memory.arch import spec_for
from rose_memory.editing import edit
from rose_memory.editing.api import method_config
from rose_memory.editing.hooks import keys_at_lookups
from rose_memory.editing.rose import _in_chat
from rose_memory.editing.tokens import Row, build_row
from rose_memory.errors import RoseMemoryError
from rose_memory.eval.cli import _check_output, parse_settings
from rose_memory.eval.data import load_benchmark
from rose_memory.model import load_model

KINDS = ("template", "name", "name_last", "after", "final")
CLOSED_FORM = ("rose", "rose-no-iso", "rose-no-hier", "memit", "alphaedit")   # LoRA writes other modules


def question_row(lm, name: str, question: str) -> tuple[Row, list[str]]:
    """The question about `name` in the chat template, every position a lookup, and each one's kind."""
    pieces = _in_chat(lm, question, name)
    start = len(build_row(lm, pieces[:1], False).ids)
    end = len(build_row(lm, pieces[:2], False).ids)
    row = build_row(lm, pieces, False)
    n = len(row.ids)
    kinds = ["template" if p < start else "name_last" if p == end - 1 else "name" if p < end
             else "final" if p == n - 1 else "after" for p in range(n)]
    return Row(ids=row.ids, lookups=list(range(n))), kinds


def moved(lm, delta, layers: list[int], rows: list[Row]) -> dict:
    """{layer: |dW k| at every lookup of `rows` (in order)} for each layer's update; one forward."""
    keys = keys_at_lookups(lm, rows, layers)                           # {layer: [n, d_in]}
    out = {}
    for layer in layers:
        u, v = delta.factors[spec_for(lm.model).mlp_out_weight(layer)]
        out[layer] = (u @ (v.T @ keys[layer].T)).norm(dim=0)
    return out


def measure(lm, subjects, index: int, method: str, settings: dict) -> dict:
    target = subjects[index]
    reqs = [{"subject": target.name, "prompt": f.prompt, "target": f.target} for f in target.facts]
    delta = edit(lm, reqs, method, settings)
    layers = method_config(lm, method, settings).layers
    others = [question_row(lm, s.name, q.format(s.name)) for s in subjects if s.name != target.name
              for f in s.facts for q in f.questions]
    own = [question_row(lm, target.name, q.format(target.name)) for f in target.facts for q in f.questions]
    own_rows = [Row(ids=r.ids, lookups=[k.index("name_last")]) for r, k in own]
    out = {"subject": target.name, "method": method, "layers": {}}
    theirs, ours = moved(lm, delta, layers, [r for r, _ in others]), moved(lm, delta, layers, own_rows)
    for layer in layers:
        m, mine = theirs[layer].tolist(), ours[layer]
        by_kind, pieces, i = defaultdict(list), {}, 0
        for row, kinds in others:
            for pos, kind in enumerate(kinds):
                by_kind[kind].append(m[i])
                if kind in ("name", "name_last"):
                    piece = lm.tokenizer.decode([row.ids[pos]])
                    pieces[piece] = max(pieces.get(piece, 0.0), m[i])
                i += 1
        out["layers"][str(layer)] = {
            "own": round(float(mine.mean()), 4),
            **{k: {"mean": round(sum(v) / len(v), 4), "max": round(max(v), 4), "tokens": len(v)}
               for k, v in by_kind.items()},
            "top_pieces": [[p, round(x, 3)] for p, x in sorted(pieces.items(), key=lambda t: -t[1])[:10]]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--subject", type=int, default=0, help="which subject is written (0: the first)")
    ap.add_argument("--method", default="rose", choices=CLOSED_FORM,
                    help="an editing method that writes the MLP output projections")
    ap.add_argument("--model", default=None)
    ap.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE",
                    help="editing setting, as `rose-memory eval --set`")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:   # everything given is checked before the model loads
        settings = parse_settings(args.settings)
        subjects = load_benchmark(args.data)
        if len(subjects) < 2:
            raise RoseMemoryError("the data needs at least two subjects: one written, the others asked about")
        if not 0 <= args.subject < len(subjects):
            raise RoseMemoryError(f"--subject must be within 0..{len(subjects) - 1}, got {args.subject}")
        if args.json:
            _check_output(args.json, "--json")
        lm = load_model(args.model)
        method_config(lm, args.method, settings)
    except RoseMemoryError as err:
        print(f"leak_by_token: {err}", file=sys.stderr)
        return 2
    report = measure(lm, subjects, args.subject, args.method, settings)
    for layer, r in report["layers"].items():
        print(f"layer {layer}: own {r['own']:.3f}; " + ", ".join(
            f"{k} {r[k]['mean']:.3f} (max {r[k]['max']:.3f})" for k in KINDS if k in r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
