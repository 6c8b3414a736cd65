"""Is a change's locality cost its size or what it learned? An edit against random noise of its size.

    python benchmarks/locality_floor.py DATA --locality FILE [--subjects 0,1,2] [--sleep] [--draws 2]
        [--scales 0.5] [--set KEY=VALUE ...] [--sleep-set KEY=VALUE ...] [--json OUT]

For each chosen subject of DATA the subject is written with RoSE and, in turn, applied as:
`write` (as the eval applies it), `write xS` (scaled by each of --scales), and `noise(write)`:
random low-rank factors of the same rank and the same Frobenius norm in every module the write
touches, in place of the write (--draws seeds). With --sleep the subject is also consolidated on
top of its write, as `rose+consolidate` does, and measured as `write+sleep` and as
`write+noise(sleep)` (the write, plus noise of the sleep delta's size in the sleep's modules).
Each condition is scored as the eval scores it: locality on the locality file and every other
subject's questions (first 8 greedy tokens against the unedited model), efficacy on the edit
forms and instruction on the subject's questions (24 tokens). Where a change costs what noise of
its size costs, only a smaller change keeps more answers; where it costs more, a more specific
one could. Minutes per subject on 2 CPU cores (a sleep a few more).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ledger_replay import restore
from rose_memory.editing import edit
from rose_memory.editing.config import validated
from rose_memory.editing.delta import Delta
from rose_memory.errors import RoseMemoryError
from rose_memory.eval.cli import _check_output, parse_settings, parse_sleep_settings
from rose_memory.eval.data import load_benchmark, load_locality
from rose_memory.eval.generate import decode
from rose_memory.eval.metrics import LOCALITY_TOKENS, hit, same_start
from rose_memory.eval.runner import Answerer, locality_probes, main_probes
from rose_memory.model import load_cached
from rose_memory.sleep import SleepConfig, consolidate_subject, scaled


def noise_like(delta: Delta, seed: int) -> Delta:
    """Random factors with each module's rank and the Frobenius norm of its U V^T."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, (u, v) in delta.factors.items():
        ru = torch.randn(u.shape, generator=g)
        rv = torch.randn(v.shape, generator=g)
        ru *= (u @ v.T).norm() / (ru @ rv.T).norm()
        factors[name] = (ru, rv)
    return Delta(factors=factors, method=f"noise({delta.method})")


class Asker:
    """The eval's locality probes (the locality file and every other subject's questions) and the
    subject's edit forms and questions, built and answered by the eval's own pieces; each measurement
    is a fresh model state of one Answerer, scored against its unedited ("clean") answers."""

    def __init__(self, lm, subjects, subject, loc_items):
        self.lm = lm
        self.answerer = Answerer(lm, progress=False)
        self.loc = locality_probes(loc_items, [o for o in subjects if o is not subject], LOCALITY_TOKENS)
        self.own = [p for p in main_probes(subject) if p.metric in ("efficacy", "instruction")]
        self.ref = [ids for _, ids in self.answerer.ask("clean", self.loc)]
        self.states = 0

    def score(self) -> dict:
        self.states += 1
        state = f"measured#{self.states}"
        answers = [ids for _, ids in self.answerer.ask(state, self.loc + self.own)]
        self.answerer.drop(state)
        loc, own = answers[: len(self.loc)], answers[len(self.loc):]
        out = {"locality": [sum(same_start(a, b) for a, b in zip(self.ref, loc)), len(self.loc)]}
        for metric in ("efficacy", "instruction"):
            asked = [(p, ids) for p, ids in zip(self.own, own) if p.metric == metric]
            out[metric] = [sum(hit(decode(self.lm, ids), p.target) for p, ids in asked), len(asked)]
        return out


class Touched:
    """Applies deltas to the model and keeps the values of the weights they touch as they were first
    found, put back bit for bit at the end by ledger_replay's `restore` (as its `add` keeps them):
    `Delta.revert` subtracts again, exact only to float rounding, and this runs on the process's
    cached model. Deltas go through `Delta.apply`, so the sleep's callback can revert them on the way."""

    def __init__(self, lm):
        self.model = lm.model
        self.params = dict(lm.model.named_parameters())
        self.saved: dict[str, torch.Tensor] = {}

    def apply(self, delta: Delta) -> Delta:
        for name in delta.factors:
            self.saved.setdefault(name, self.params[name].detach().clone())
        return delta.apply(self.model)

    def put_back(self, deltas) -> None:
        for d in deltas:
            if d is not None and d.is_applied:
                d.revert(self.model)
        restore(self.params, self.saved)


def measured(lm, asker: Asker, deltas: list[Delta]) -> dict:
    """Score with `deltas` applied; the weights are the same as before afterwards."""
    touched = Touched(lm)
    try:
        for d in deltas:
            touched.apply(d)
        return asker.score()
    finally:
        touched.put_back(reversed(deltas))


def sleep_on(lm, subject, wake: Delta, cfg: SleepConfig) -> tuple[Delta | None, str | None]:
    """The sleep stage on top of the subject's write, as `rose+consolidate` runs it: the sleep delta
    it leaves (None when refused) and why it was refused. The weights are the same as before afterwards."""
    held = {"wake": None, "sleep": None}
    touched = Touched(lm)

    def set_weights(scales, delta):
        for key in held:
            if held[key] is not None:
                held[key].revert(lm.model)
                held[key] = None
        held["wake"] = touched.apply(scaled(wake, scales[0]) if scales[0] != 1.0 else wake)
        held["sleep"] = touched.apply(delta) if delta is not None else None

    reqs = subject.requests()
    try:
        out = consolidate_subject(lm, reqs, [list(range(len(reqs)))], set_weights, cfg)
    finally:
        touched.put_back(held.values())
    return out.delta, out.reason


class Rows(list):
    """The rows of one subject; each is reported on stderr as it comes (a subject takes minutes)."""

    def __init__(self, subject: str):
        super().__init__()
        self.subject = subject

    def append(self, row: dict) -> None:
        super().append(row)
        figures = ", ".join(f"{m} {row[m][0]} of {row[m][1]}" for m in ("locality", "efficacy", "instruction") if m in row)
        print(f"{self.subject}: {row['condition']}: {figures or 'refused'}", file=sys.stderr, flush=True)


def run_subject(lm, subjects, index: int, loc_items, settings: dict, sleep_cfg: SleepConfig | None,
                scales: list[float], draws: int) -> dict:
    s = subjects[index]
    asker = Asker(lm, subjects, s, loc_items)
    wake = edit(lm, s.requests(), "rose", settings)
    rows = Rows(s.name)
    rows.append({"condition": "write", "norm": wake.norm(), **measured(lm, asker, [wake])})
    for k in scales:
        w = scaled(wake, k)
        rows.append({"condition": f"write x{k:g}", "norm": w.norm(), **measured(lm, asker, [w])})
    for d in range(draws):
        rows.append({"condition": "noise(write)", "draw": d, "norm": wake.norm(),
                     **measured(lm, asker, [noise_like(wake, 1000 * index + d)])})
    if sleep_cfg is not None:
        sleep, reason = sleep_on(lm, s, wake, sleep_cfg)
        if sleep is None:
            rows.append({"condition": "write+sleep", "refused": reason or True})
        else:
            rows.append({"condition": "write+sleep", "norm": sleep.norm(), "scale": sleep.meta.get("scale"),
                         **measured(lm, asker, [wake, sleep])})
            for d in range(draws):
                rows.append({"condition": "write+noise(sleep)", "draw": d, "norm": sleep.norm(),
                             **measured(lm, asker, [wake, noise_like(sleep, 1000 * index + 500 + d)])})
    return {"subject": s.name, "rows": list(rows)}


def totals(runs: list[dict]) -> list[dict]:
    """Per condition, summed over subjects (noise draws averaged within a subject first)."""
    out: dict[str, dict] = {}
    for run in runs:
        by_cond: dict[str, list[dict]] = {}
        for r in run["rows"]:
            if not r.get("refused"):
                by_cond.setdefault(r["condition"], []).append(r)
        for cond, rs in by_cond.items():
            t = out.setdefault(cond, {"condition": cond, "subjects": 0, "locality": [0.0, 0], "efficacy": [0.0, 0],
                                      "instruction": [0.0, 0], "norm": 0.0})
            t["subjects"] += 1
            t["norm"] += sum(r["norm"] for r in rs) / len(rs)
            for m in ("locality", "efficacy", "instruction"):
                t[m][0] += sum(r[m][0] for r in rs) / len(rs)
                t[m][1] += rs[0][m][1]
    for t in out.values():
        t["norm"] /= t["subjects"]
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--locality", required=True)
    ap.add_argument("--subjects", default="0,1,2", help="indexes into DATA, comma-separated")
    ap.add_argument("--scales", default="0.5", help="scales of the write to measure too, comma-separated ('' for none)")
    ap.add_argument("--draws", type=int, default=2, help="noise draws per condition")
    ap.add_argument("--sleep", action="store_true", help="also consolidate each subject and measure the sleep delta")
    ap.add_argument("--model", default=None)
    ap.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE", help="editing setting")
    ap.add_argument("--sleep-set", action="append", default=[], dest="sleep_settings", metavar="KEY=VALUE",
                    help="a SleepConfig field")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:   # everything given is checked before the model loads
        settings = parse_settings(args.settings)
        validated(settings, "bad --set")      # a misspelt editing setting, before the model loads
        sleep_cfg = SleepConfig.model_validate(parse_sleep_settings(args.sleep_settings)) if args.sleep else None
        subjects, loc_items = load_benchmark(args.data), load_locality(args.locality)
        try:
            picked = [int(x) for x in args.subjects.split(",")]
            scales = [float(x) for x in args.scales.split(",") if x.strip()]
        except ValueError:
            raise RoseMemoryError("--subjects takes indexes and --scales numbers, comma-separated") from None
        if len(subjects) < 2:
            raise RoseMemoryError("the data needs at least two subjects: one written, the others asked about")
        bad = [i for i in picked if not 0 <= i < len(subjects)]
        if bad:
            raise RoseMemoryError(f"--subjects must be within 0..{len(subjects) - 1}, got {bad[0]}")
        if args.draws < 0:
            raise RoseMemoryError("--draws must be 0 or more")
        if args.json:
            _check_output(args.json, "--json")
    except (RoseMemoryError, ValueError) as err:
        print(f"locality_floor: {err}", file=sys.stderr)
        return 2
    lm = load_cached(args.model)
    runs = []
    for i in picked:
        run = run_subject(lm, subjects, i, loc_items, settings, sleep_cfg, scales, args.draws)
        runs.append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    table = totals(runs)
    print("| condition | locality kept | efficacy | instruction | mean norm |")
    print("|---|---|---|---|---|")
    for t in table:
        print(f"| {t['condition']} | {t['locality'][0]:g} of {t['locality'][1]} ({t['locality'][0] / t['locality'][1]:.3f}) "
              f"| {t['efficacy'][0]:g} of {t['efficacy'][1]} | {t['instruction'][0]:g} of {t['instruction'][1]} | {t['norm']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "sleep": sleep_cfg.model_dump() if sleep_cfg else None,
                       "totals": table, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
