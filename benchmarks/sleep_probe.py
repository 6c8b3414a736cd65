"""The sleep stage alone on a few benchmark subjects: recall through their questions, and what it moves.

For each chosen subject, the sleep is run on the clean weights with no wake edit (so every
answer it changes is the sleep delta's doing), then the subject's questions and paraphrases
are asked, and the locality prompts plus every third question of the other subjects are
compared with the clean model's first 8 tokens (the eval's locality test). With `--wake` the
subject is written with RoSE first and the sleep trains on top of it. A sleep the canary or the
gate refuses leaves no delta, and the figures are then the wake edit's alone (`applied` false in
the output): set `canary_refuse=false` to measure a delta the canary would refuse. Used to
choose the sleep's settings before a full `rose-memory eval` run; figures are in docs/sleep.md.

    python benchmarks/sleep_probe.py DATA --locality FILE [--subjects 0,1] [--set KEY=VALUE ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rose_memory.eval.cli import parse_sleep_settings
from rose_memory.eval.data import load_benchmark, load_locality
from rose_memory.eval.generate import decode, encode, render
from rose_memory.generate import generate_ids
from rose_memory.model import load_cached
from rose_memory.editing import edit
from rose_memory.sleep import SleepConfig, consolidate_subject, scaled
from rose_memory.text import mentions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("--locality", required=True)
    p.add_argument("--subjects", default="0,1", help="indexes into the data file")
    p.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE", help="a SleepConfig field")
    p.add_argument("--wake", action="store_true", help="write the subject with RoSE first and sleep on top of it (as rose+consolidate does)")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)
    cfg = SleepConfig.model_validate(parse_sleep_settings(args.settings))
    subjects, loc = load_benchmark(args.data), load_locality(args.locality)
    lm = load_cached()
    ask = lambda prompts, n: generate_ids(lm, [encode(lm, t, c) for t, c in prompts], max_new_tokens=n)  # noqa: E731
    runs = []
    for i in (int(x) for x in args.subjects.split(",")):
        s = subjects[i]
        probes = [(render(lm, it.prompt, it.chat), it.chat) for it in loc]
        probes += [(render(lm, q, True), True) for o in subjects if o is not s for q in o.questions()][::3]
        ref = ask(probes, 8)
        held = {"delta": None, "wake": None}
        wake = edit(lm, s.requests(), method="rose") if args.wake else None

        def set_weights(scales, delta):
            for key in ("delta", "wake"):
                if held[key] is not None:
                    held[key].revert(lm.model)
                    held[key] = None
            if wake is not None:
                held["wake"] = (scaled(wake, scales[0]) if scales[0] != 1.0 else wake).apply(lm.model)
            held["delta"] = delta.apply(lm.model) if delta is not None else None

        t = time.perf_counter()
        notes = []
        out = consolidate_subject(lm, s.requests(), [list(range(len(s.facts)))] if wake else [], set_weights, cfg, on_step=lambda k, d: (notes.append({"kind": k, **d}),
                                                                    print(json.dumps({"kind": k, **{x: y for x, y in d.items() if x not in ("questions", "open_requests")}})[:400], file=sys.stderr, flush=True)))
        if held["delta"] is None and out.delta is not None:
            held["delta"] = out.delta.apply(lm.model)
        if wake is not None and held["wake"] is None:
            held["wake"] = wake.apply(lm.model)
        questions = [(f.target, q.replace("{}", s.name)) for f in s.facts for q in f.questions]
        answers = [decode(lm, a) for a in ask([(render(lm, q, True), True) for _, q in questions], 24)]
        para = [(f.target, q.replace("{}", s.name)) for f in s.facts for q in f.paraphrases]
        para_answers = [decode(lm, a) for a in ask([(q, False) for _, q in para], 24)]
        same = [a == b for a, b in zip(ref, ask(probes, 8))]
        for key in ("delta", "wake"):
            if held[key] is not None:
                held[key].revert(lm.model)
        # a refused sleep leaves no delta: the figures are then the wake edit's alone
        run = {"subject": s.name, "seconds": round(time.perf_counter() - t, 1), "applied": out.delta is not None,
               "reason": out.reason,
               "instruction": [sum(mentions(a, t) for (t, _), a in zip(questions, answers)), len(questions)],
               "generalization": [sum(mentions(a, t) for (t, _), a in zip(para, para_answers)), len(para)],
               "locality": [sum(same), len(same)], "locality_file": [sum(same[: len(loc)]), len(loc)],
               "steps": [n for n in notes if n["kind"] in ("trained", "delta_scale", "gate")],
               "answers": [{"question": q, "object": t, "answer": a} for (t, q), a in zip(questions, answers)]}
        runs.append(run)
        print(json.dumps({k: v for k, v in run.items() if k not in ("answers", "steps")}
                         | {"scale": [n for n in notes if n["kind"] == "delta_scale"]}), file=sys.stderr, flush=True)
    total = {k: [sum(r[k][0] for r in runs), sum(r[k][1] for r in runs)]
             for k in ("instruction", "generalization", "locality", "locality_file")}
    doc = {"settings": cfg.model_dump(), "total": total, "runs": runs}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
    print(json.dumps(total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
