"""Sleep: consolidation by prompt distillation (DESIGN.md, "Wake and sleep").

For one subject: a transfer set of questions per fact (`transfer`), the teacher's kept answers
with the facts in its prompt (`teacher`), a low-rank student delta trained to match them while
unrelated prompts keep their old answers (`train`), and a per-fact gate on held-back questions
(`gate`) that decides which facts the new delta carries and which wake (RoSE) edits can be
scaled down and removed. The weights are set through a callback, so the memory (ledger,
crash safety) and the benchmark (plain deltas) drive the same procedure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ..editing.contexts import OTHER_NAMES
from ..generate import generate_ids
from ..editing.delta import Delta
from ..facts import EditRequest
from ..model import LoadedModel
from .config import SleepConfig
from .gate import check_facts
from .people import made_up_names, recombined_names
from .teacher import canary_prompts, other_people_prompts, teacher_examples, unrelated_examples
from .train import train_delta
from .transfer import transfer_set

__all__ = ["SleepConfig", "SleepOutcome", "consolidate_subject", "scaled"]

SetWeights = Callable[[list[float], "Delta | None"], None]


@dataclass
class SleepOutcome:
    delta: Delta | None                  # None when the sleep was refused (`reason` says why)
    facts: list[dict]                    # per fact: stage, gate figures before and after, kept answers
    wake_scales: list[float]             # final scale of each wake edit (0: removed, 1: kept)
    steps: list[dict] = field(default_factory=list)  # each gate measurement, in order
    seconds: float = 0.0
    reason: str | None = None            # why the sleep was refused (delta None)
    canary: list[dict] = field(default_factory=list)  # share of canary answers kept at each delta scale tried
    after: dict = field(default_factory=dict)  # the gate at the final wake scales with the sleep delta (what stays)


def scaled(delta: Delta, scale: float) -> Delta:
    """A copy of `delta` with every factor pair scaled (U * scale)."""
    return Delta(factors={n: (u * scale, v) for n, (u, v) in delta.factors.items()}, method=delta.method,
                 meta=dict(delta.meta), keys=dict(delta.keys))


def _summary(checks: list[dict]) -> dict:
    n = len(checks)
    return {"edit": sum(c["edit"] for c in checks) / n, "held_out": sum(c["held_out"] for c in checks) / n,
            "passed": sum(c["passed"] for c in checks) / n}


CANARY_TOKENS = 8  # what the benchmark's locality compares


def _kept(ref: list[list[int]], answers: list[list[int]]) -> float:
    """Share of answers whose first CANARY_TOKENS tokens are those of `ref`."""
    same = [a[:CANARY_TOKENS] == b[:CANARY_TOKENS] for a, b in zip(ref, answers)]
    return sum(same) / max(len(same), 1)


def _canary_scale(lm: LoadedModel, delta: Delta, canary: list[list[int]], ref: list[list[int]], set_weights: SetWeights,
                  n_wake: int, cfg: SleepConfig, canary_min: float) -> tuple[Delta, list[dict]]:
    """The sleep delta at the largest of `cfg.delta_scales` that keeps `canary_min` of the
    canary answers (wake edits at `cfg.student_wake`); the smallest scale if none does (and the
    sleep is then refused unless `cfg.canary_refuse` is off). Why: the KL holds the
    prompts it trains on, but answers about people it never saw move more, and a scaled-down
    delta trades some recall for them, measured rather than guessed."""
    checks = []
    chosen = delta
    for s in cfg.delta_scales:
        chosen = scaled(delta, s) if s != 1.0 else delta
        chosen.meta["scale"] = s
        set_weights([cfg.student_wake] * n_wake, chosen)
        share = _kept(ref, generate_ids(lm, canary, max_new_tokens=CANARY_TOKENS))
        checks.append({"scale": s, "canary_same": round(share, 3)})
        if share >= canary_min:
            break
    return chosen, checks


def consolidate_subject(lm: LoadedModel, reqs: list[EditRequest], wake_groups: list[list[int]], set_weights: SetWeights,
                        cfg: SleepConfig | None = None, progress: bool = False,
                        on_step: Callable[[str, dict], None] | None = None,
                        remembered: Sequence[EditRequest] = ()) -> SleepOutcome:
    """Distil one subject's facts into a new delta and gate each fact; see the module docstring.

    `remembered`: facts the memory holds about other subjects (their edits live in the weights), which
    the new delta must leave as they are (`SleepConfig.remembered`).

    `wake_groups[j]` lists the indexes into `reqs` of the facts wake edit j holds;
    `set_weights(scales, delta)` must set the live weights to everything else + wake edit j
    times scales[j] + `delta` (None: no sleep delta). The weights are left as the outcome says.
    """
    cfg = cfg or SleepConfig()
    start = time.perf_counter()
    report = on_step or (lambda kind, data: None)

    def note(kind: str, data: dict) -> None:
        report(kind, data | {"seconds": round(time.perf_counter() - start, 1)})

    ones, zeros = [1.0] * len(wake_groups), [0.0] * len(wake_groups)
    bar = tqdm(total=5, desc=f"sleep: {reqs[0].subject}", leave=False, **({} if progress else {"disable": True}))

    def stage(name: str) -> None:
        bar.set_postfix_str(name)

    stage("questions")
    set_weights(zeros, None)  # transfer set, teacher and reference: the model before this subject's wake edits
    facts, open_requests = transfer_set(lm, reqs, cfg)
    set_weights(ones, None)
    before = check_facts(lm, facts, cfg)
    note("gate", {"wake_scale": 1.0, "sleep_delta": False, **_summary(before)})
    bar.update(1)
    stage("teacher")
    set_weights(zeros, None)
    examples, counts = teacher_examples(lm, facts, open_requests, cfg)
    subject = reqs[0].subject
    namer = recombined_names if cfg.people == "recombined" else made_up_names
    people = namer(cfg.other_names + cfg.canary_names, cfg.seed, avoid=subject)
    # unrelated prompts and the canary are held to what the memory answers now (the wake edits as the
    # student sees them, no sleep delta): the sleep is judged on what it moves, and a student held to
    # the answers before the wake edit learns to undo the edit's own side effects, a broad change
    # (measured with free input factors; keep_reference="before_wake" asks it of a trace-keyed delta)
    wake = [cfg.student_wake] * len(wake_groups)
    set_weights(zeros if cfg.keep_reference == "before_wake" else wake, None)
    unrelated = unrelated_examples(lm, facts, people[: cfg.other_names], cfg, remembered)
    canary = canary_prompts(lm, facts, people[cfg.other_names:], cfg)
    canary_ref = generate_ids(lm, canary, max_new_tokens=CANARY_TOKENS)
    canary_min, wake_alone = cfg.canary_min, []
    if cfg.keep_reference == "before_wake":
        set_weights(wake, None)
        wake_kept = _kept(canary_ref, generate_ids(lm, canary, max_new_tokens=CANARY_TOKENS))
        canary_min = min(canary_min, wake_kept)  # no further from the model before the write than the write alone
        wake_alone = [{"scale": 0.0, "canary_same": round(wake_kept, 3), "wake_alone": True}]
    note("transfer_set", {"questions": [{"prompt": f.request.prompt, "train": f.train, "held_out": f.held} for f in facts],
                          "open_requests": open_requests, "kept": counts, "unrelated": len(unrelated),
                          "remembered": min(len(remembered), cfg.remembered)})
    bar.update(1)
    stage("training")
    losses: list[tuple[float, float]] = []
    null = []
    if cfg.inputs == "subject":
        others = [n for n in OTHER_NAMES if n != reqs[0].subject][: cfg.null_names]
        null = other_people_prompts(lm, facts, others, cfg)
    # trained on the weights set above for the unrelated prompts (wake edits at student_wake)
    delta = train_delta(lm, examples, unrelated, cfg, on_step=lambda s, a, b: losses.append((a, b)), null_prompts=null,
                        subject=subject, other_names=people[: cfg.other_names],
                        set_wake=lambda scale: set_weights([scale] * len(wake_groups), None))
    note("trained", {"steps": cfg.steps, "fact_loss": [losses[0][0], losses[-1][0]] if losses else [],
                     "keep_loss": [losses[0][1], losses[-1][1]] if losses else []})
    delta, scale_checks = _canary_scale(lm, delta, canary, canary_ref, set_weights, len(wake_groups), cfg, canary_min)
    canary_ok = scale_checks[-1]["canary_same"] >= canary_min
    scale_checks = wake_alone + scale_checks  # with keep_reference="before_wake": the wake edits alone first (delta scale 0)
    note("delta_scale", {"scale": delta.meta.get("scale", 1.0), "canary": scale_checks, "canary_ok": canary_ok,
                         "canary_min": round(canary_min, 3)})
    bar.update(1)
    stage("gate")
    steps, gates = [], {}
    # a delta keyed to the wake edit's trace reads it at the strength it was trained with (held-back 0.0
    # at wake scales 0.5 and 0 after training at 1, all 6 subjects of a seed-1 eval, 2026-12-01): it is
    # gated there and the wake edits stay at `student_wake`; other deltas step the wake edits down
    keyed = cfg.inputs == "trace"
    for s in [cfg.student_wake] if keyed else [1.0, *cfg.scale_steps]:
        set_weights([s] * len(wake_groups), delta)
        gates[s] = check_facts(lm, facts, cfg)
        steps.append({"wake_scale": s, "sleep_delta": True, **_summary(gates[s])})
        note("gate", steps[-1])
    bar.update(1)
    low = min(gates)
    # a wake edit goes when the sleep delta alone carries all its facts; otherwise it stays whole
    final = [low if keyed or all(gates[low][i]["passed"] for i in g) else 1.0 for g in wake_groups]
    if len(set(final)) <= 1 and (final[0] if final else low) in gates:
        checks = gates[final[0] if final else low]
    else:
        set_weights(final, delta)
        checks = check_facts(lm, facts, cfg)
        steps.append({"wake_scale": final, "sleep_delta": True, **_summary(checks)})
        note("gate", steps[-1])
    # a fact is consolidated when the sleep delta alone carries it, even if its wake edit stays for another
    # fact; with inputs="trace" none is (the delta reads the wake edit), and the gate at student_wake decides the keep
    consolidated = [gates[low][i]["passed"] and low == 0.0 and not keyed for i in range(len(facts))]
    # kept when it carries a fact alone or answers more held-back questions than the wake edits did
    keep = any(consolidated) or _summary(checks)["held_out"] > _summary(before)["held_out"]
    keep = keep and (canary_ok or not cfg.canary_refuse)  # never a sleep that moves other people's answers
    set_weights(final if keep else [1.0] * len(wake_groups), delta if keep else None)
    bar.update(1)
    bar.close()
    consolidated = [c_ and keep for c_ in consolidated]
    per_fact = [{"prompt": r.prompt, "object": r.target, "stage": "consolidated" if c_ else "wake",
                 "before": {"edit": b["edit"], "held_out": b["held_out"]},
                 "after": {"edit": c["edit"], "held_out": c["held_out"]},
                 "kept_answers": k["kept_answers"], "sentence_answers": k["sentence_answers"], "answers": c["answers"]}
                for r, c_, b, c, k in zip(reqs, consolidated, before, checks, counts)]
    reason = None
    if not keep:
        final = [1.0] * len(wake_groups)
        reason = (f"at every scale the sleep delta changed more than {1 - canary_min:.0%} of the answers about "
                  f"people it never saw; the wake edits stay as they were" if not canary_ok and cfg.canary_refuse
                  else f"the sleep delta answered no more held-back questions than the wake edits did "
                  f"({_summary(checks)['held_out']:.2f} against {_summary(before)['held_out']:.2f}) and carries no "
                  f"fact alone; the wake edits stay as they were")
    return SleepOutcome(delta=delta if keep else None, facts=per_fact, wake_scales=final, steps=steps,
                        seconds=time.perf_counter() - start, reason=reason,
                        canary=scale_checks, after={"wake_scale": final, **_summary(checks)})
