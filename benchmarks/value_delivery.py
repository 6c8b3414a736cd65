"""A diagnostic, never a method: is RoSE held back by its value, or by the weight edit that delivers it?

For each subject of a benchmark file the value is optimised as `rose` does it
(`rose.rose_targets`, the same settings), then each instruction question of the subject is
answered twice, greedy, through the chat template:
  value    the value's change added straight to block z's output (z: the last edited layer) at
           every mention of the subject, prompt and answer alike; no weight is changed;
  weights  the weight edit applied (the Delta that `rose-memory eval` measures).
Under the weight edit it also reads block z's change at the question's first mention of the
subject against the wanted change (cosine, norm ratio; 1 and 1 = delivered exactly).
If `value` answers no more than `weights`, the delivery is not what limits recall.

    python benchmarks/value_delivery.py DATA [--limit N] [--model M] [--set KEY=VALUE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict

import torch
import torch.nn.functional as F

from rose_memory.editing import edit, warm_up
from rose_memory.editing.api import method_config
from rose_memory.editing.hooks import add_at_block, keys_and_outputs
from rose_memory.editing.rose import rose_targets
from rose_memory.editing.targets import TargetCache
from rose_memory.editing.tokens import Row
from rose_memory.errors import RoseMemoryError
from rose_memory.eval.cli import _check_output, parse_settings
from rose_memory.eval.data import fill, load_benchmark
from rose_memory.eval.generate import decode, encode, render
from rose_memory.eval.metrics import hit
from rose_memory.generate import MAX_NEW_TOKENS, eos_ids, generate_ids
from rose_memory.model import load_model


def mention_ends(ids: list[int], forms: list[list[int]]) -> list[int]:
    """Positions where one of the subject's token forms ends (its last token)."""
    return [p for p in range(len(ids))
            if any(p + 1 >= len(f) and ids[p + 1 - len(f): p + 1] == f for f in forms)]


def answer_with_value(lm, layer: int, prompts: list[list[int]], forms: list[list[int]],
                      change: torch.Tensor) -> list[list[int]]:
    """Greedy answers with `change` [d] added to block `layer`'s output at every mention; no
    key/value cache, so a mention the answer itself writes gets the change too."""
    stop = set(eos_ids(lm))
    vec = change[None].to(lm.device)
    out = []
    for prompt in prompts:
        ids: list[int] = list(prompt)
        for _ in range(MAX_NEW_TOKENS):
            at = [(0, p, 0) for p in mention_ends(ids, forms)]
            with torch.no_grad(), add_at_block(lm.model, layer, at, vec):
                nxt = int(lm.model(input_ids=torch.tensor([ids], device=lm.device)).logits[0, -1].argmax())
            if nxt in stop:
                break
            ids.append(nxt)
        out.append(ids[len(prompt):])
    return out


def block_output(lm, layer: int, prompts: list[list[int]], forms: list[list[int]]) -> torch.Tensor:
    """Block `layer`'s output at each prompt's first mention of the subject: [n, d]."""
    rows = [Row(ids=list(p), lookups=mention_ends(p, forms)[:1]) for p in prompts]
    return keys_and_outputs(lm, rows, [layer], out_layer=layer)[1]


def measure(lm, subject, cfg, settings: dict) -> dict:
    tok = lm.tokenizer
    z = cfg.layers[-1]
    reqs = subject.requests()
    cache = TargetCache()
    value = rose_targets(lm, OrderedDict([(subject.name, reqs)]), cfg, cache)[0]      # [d]
    forms = [tok(s, add_special_tokens=False).input_ids for s in (subject.name, " " + subject.name)]
    plain = tok(subject.name).input_ids
    hidden = block_output(lm, z, [plain], forms)[0]                                  # unedited, [d]
    change = value - hidden
    asked = [(fill(q, subject.name), f.target) for f in subject.facts for q in f.questions]
    prompts = [encode(lm, render(lm, q, True), True) for q, _ in asked]
    if any(not mention_ends(p, forms) for p in prompts):
        raise RoseMemoryError(f"{subject.name!r}: a question's tokens do not contain the subject's")
    by_value = answer_with_value(lm, z, prompts, forms, change)
    before = block_output(lm, z, prompts, forms)
    delta = edit(lm, reqs, "rose", settings, cache=cache)     # the value above, from the cache
    delta.apply(lm.model)
    try:
        by_weights = generate_ids(lm, prompts)
        moved = block_output(lm, z, prompts, forms) - before
    finally:
        delta.revert(lm.model)
    cos = F.cosine_similarity(moved, change[None], dim=-1)
    ratio = moved.norm(dim=-1) / change.norm()
    questions = []
    for (q, t), a, b, c, r in zip(asked, by_value, by_weights, cos, ratio):
        a, b = decode(lm, a), decode(lm, b)
        questions.append({"question": q, "target": t, "value": a, "weights": b, "value_hit": hit(a, t),
                          "weights_hit": hit(b, t), "cosine": round(float(c), 3), "norm_ratio": round(float(r), 3)})
    return {"subject": subject.name, "value_norm_over_hidden": round(float(change.norm() / hidden.norm()), 3),
            "questions": questions}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--limit", type=int, default=None, help="the first N subjects")
    ap.add_argument("--model", default=None)
    ap.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE",
                    help="RoSE setting, as `rose-memory eval --set`")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:   # everything given is checked before the model loads, as `rose-memory eval` does
        settings = parse_settings(args.settings)
        subjects = load_benchmark(args.data)
        if args.limit is not None:
            if args.limit < 1:
                raise RoseMemoryError(f"--limit must be at least 1, got {args.limit}")
            subjects = subjects[: args.limit]
        if args.json:
            _check_output(args.json, "--json")
        lm = load_model(args.model)
        cfg = method_config(lm, "rose", settings)
    except RoseMemoryError as err:
        print(f"value_delivery: {err}", file=sys.stderr)
        return 2
    warm_up(lm, "rose", settings)
    report = {"data": args.data, "settings": settings, "subjects": []}
    for s in subjects:
        t = time.perf_counter()
        res = measure(lm, s, cfg, settings)
        report["subjects"].append(res)
        qs = res["questions"]
        print(f"{s.name}: value {sum(q['value_hit'] for q in qs)}, weights {sum(q['weights_hit'] for q in qs)} "
              f"of {len(qs)}; delivered cosine {sum(q['cosine'] for q in qs) / len(qs):.3f}, norm ratio "
              f"{sum(q['norm_ratio'] for q in qs) / len(qs):.3f} ({time.perf_counter() - t:.0f} s)", flush=True)
    every = [q for r in report["subjects"] for q in r["questions"]]
    report["totals"] = {"questions": len(every), "value": sum(q["value_hit"] for q in every),
                        "weights": sum(q["weights_hit"] for q in every)}
    print(json.dumps(report["totals"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
