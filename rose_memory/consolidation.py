"""Consolidation as the memory runs it: the sleep stage of one subject, recorded in the ledger.

The procedure itself (transfer set, teacher, training, gate) is `rose_memory.sleep`; this
module holds what the ledger needs around it, so that `ParametricMemory` only delegates:
- a `pending` row (origin "sleep") is committed before any weight changes; every step of
  the sleep (transfer set, training losses, each gate measurement at each scale of the wake
  edits) is a note event on it; a crash leaves it pending, and reopening marks it failed and
  recomposes the weights from the applied rows, as for a write;
- one sleep delta per subject and namespace: a new sleep of the subject covers all its live
  facts and replaces the previous sleep delta (which must not lose a fact it carried);
- the commit is one transaction: the sleep row applied with each fact's stage, and each wake
  edit whose facts all passed marked `consolidated` into it (its delta leaves the weights).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from . import faults
from .holding import HELD
from .facts import stored_requests
from .sleep import SleepConfig, consolidate_subject

if TYPE_CHECKING:
    from .memory import ParametricMemory, WriteRecord


class ConsolidationPolicy(BaseModel):
    """When the ledger asks for a sleep (checked after every applied write)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a silent default

    enabled: bool = True
    every_n_writes: int | None = 20            # applied writes since the last sleep: sleep every subject with new wake edits
    # a subject written this many times since its last sleep sleeps (counted in writes, not live edits:
    # a write carries the subject's earlier facts into its own edit, so a subject has one live wake edit);
    # `max_live_edits_per_subject`, its name until 2026-12-01, is still read. Off since 2026-12-02: the
    # subject's next write supersedes the sleep delta (its facts go into a new wake edit) and the sleep
    # resets the every_n_writes count, so with 3, writing the dev split's facts one at a time slept 20 times
    # and left 7 of 20 subjects with a live sleep delta; off, 23 sleeps left 19 (benchmarks/policy_schedule.py)
    writes_per_subject: int | None = Field(None, validation_alias=AliasChoices("writes_per_subject", "max_live_edits_per_subject"))
    recheck_every: int | None = 10             # re-verify live edits every this many writes ...
    recheck_min_recall: float = 0.5            # ... and sleep subjects whose edit-form recall fell below this
    recheck_max_subjects: int = 10             # most recent subjects re-verified per check
    keep_if_worse: bool = True                 # refuse a sleep that lowers the subject's gate recall


class ConsolidationRecord(BaseModel):
    edit_id: int
    status: str
    subject: str
    namespace: str
    replaced: list[int]           # wake edits (and an earlier sleep delta) now carried by this one
    kept_awake: list[int]         # wake edits left applied: a fact of theirs failed the gate
    facts: list[dict]             # per fact: stage ("consolidated" or "wake"), gate figures before/after
    recall_before: dict[str, Any]
    recall_after: dict[str, Any]
    seconds: float = 0.0
    reason: str | None = None


def sleep_stages(events: list[dict]) -> list[dict]:
    """Where a sleep's time went: seconds since it began at the end of each stage, read from
    the note events `sleep_subject` writes on its row (`mem.ledger.events(row_id)`)."""
    return [{"stage": kind, "seconds": data["seconds"]} for e in events if e["kind"] == "note"
            for kind, data in e["data"].items() if isinstance(data, dict) and "seconds" in data]


def _facts(rows: list[dict]) -> dict[str, dict]:
    return {f["prompt"]: f for r in rows for f in r["facts"]}  # a later edit wins a relation


def _remembered(mem: "ParametricMemory", namespace: str, subject: str) -> list:
    """The live facts of the namespace's other subjects, oldest subject first: a sleep holds them as they are."""
    by_subject: dict[str, list[dict]] = {}
    for r in mem.ledger.rows(status="applied", namespace=namespace):
        if r["subject"] != subject:
            by_subject.setdefault(r["subject"], []).append(r)
    return [req for s, rows in by_subject.items() for req in stored_requests(s, list(_facts(rows).values()))]


def sleep_subject(mem: "ParametricMemory", namespace: str, subject: str, rows: list[dict]) -> ConsolidationRecord | None:
    """Sleep one subject whose applied rows are `rows`; None if there is nothing awake to consolidate."""
    wake = [r for r in rows if r["origin"] != "sleep"]
    old_sleep = [r for r in rows if r["origin"] == "sleep"]
    if not wake:
        return None
    mem._use(namespace)  # the weights (and mem.live) of the subject's namespace
    facts = _facts(old_sleep + wake)
    reqs = stored_requests(subject, list(facts.values()))
    index = {r.prompt: i for i, r in enumerate(reqs)}
    groups = [[index[f["prompt"]] for f in r["facts"] if facts[f["prompt"]] is f] for r in wake]
    eid = mem.ledger.add(subject, list(facts.values()), "sleep", namespace, origin="sleep")
    replaced_ids = {r["id"] for r in rows}
    others = {i: d for i, d in mem.live.items() if i not in replaced_ids}
    wake_deltas = {r["id"]: mem.live[r["id"]] for r in wake}
    cfg = SleepConfig.model_validate(mem.config.sleep)
    remembered = _remembered(mem, namespace, subject)
    faults.point("sleep:pending")

    def set_weights(scales: list[float], delta) -> None:
        live = others | wake_deltas | ({eid: delta} if delta is not None else {})
        mem._compose(live, scales={r["id"]: s for r, s in zip(wake, scales)})

    fields: dict = {}
    try:
        out = consolidate_subject(mem.lm, reqs, groups, set_weights, cfg, progress=mem.progress,
                                  on_step=lambda kind, data: (mem.ledger.note(eid, {kind: data}), faults.point(f"sleep:{kind}")),
                                  remembered=remembered)
        after = out.after  # the final wake scales' gate (steps[-1] is the last scale tried, not always the one kept)
        first = [f["before"] for f in out.facts]
        recall_before = {"edit": sum(f["edit"] for f in first) / len(first),
                         "held_out": sum(f["held_out"] for f in first) / len(first)}
        recall_after = {k: after[k] for k in ("edit", "held_out", "passed")}
        carried_only_by_sleep = {f["prompt"] for r in old_sleep for f in r["facts"]} - {
            reqs[i].prompt for g, r in zip(groups, wake) for i in g}
        lost = [f["prompt"] for f in out.facts if f["stage"] != "consolidated" and f["prompt"] in carried_only_by_sleep]
        reason = None
        partial = sorted({s for s in out.wake_scales if s not in (0.0, 1.0)})
        if out.delta is None:
            reason = out.reason
        elif partial:  # a kept wake edit is applied whole: a partly scaled one would be applied at the wrong strength
            reason = (f"the sleep left wake edits at scale {partial}; the memory keeps a wake edit whole or removes it "
                      f"(student_wake < 1 with inputs='trace', or scale_steps without 0, are measured by the batch eval only)")
        elif lost:
            reason = f"the new sleep delta would lose {lost}, which only the earlier one carries"
        elif mem.config.policy.keep_if_worse and (recall_after["edit"] + recall_after["held_out"]
                                                  < recall_before["edit"] + recall_before["held_out"]):
            reason = "the sleep lowered the subject's gate recall; kept the wake edits"
        fields["metrics"] = {"facts": out.facts, "steps": out.steps, "recall_before": recall_before,
                             "recall_after": recall_after, "seconds": round(out.seconds, 1)}
        if reason is not None:
            raise _Refused(reason)
        fields["delta_file"], fields["delta_sha256"] = mem.store.save(eid, out.delta)
        faults.point("sleep:saved")
        gone = [r for r, s in zip(wake, out.wake_scales) if s == 0.0] + old_sleep
        kept = [r for r, s in zip(wake, out.wake_scales) if s != 0.0]
        mem.ledger.transition([(eid, "applied", fields)] + [(r["id"], "consolidated", {"consolidated_into": eid}) for r in gone])
        faults.point("sleep:committed")
        mem.live = others | {r["id"]: wake_deltas[r["id"]] for r in kept} | {eid: out.delta}
        mem._compose(mem.live)
        return ConsolidationRecord(edit_id=eid, status="applied", subject=subject, namespace=namespace,
                                   replaced=[r["id"] for r in gone], kept_awake=[r["id"] for r in kept], facts=out.facts,
                                   recall_before=recall_before, recall_after=recall_after, seconds=out.seconds)
    except BaseException as err:
        mem._compose(mem.live)  # back to exactly what the ledger says is applied
        reason = str(err) if isinstance(err, _Refused) else f"{type(err).__name__}: {err}"
        mem.ledger.transition([(eid, "failed", fields | {"reason": reason})])
        if not isinstance(err, _Refused):
            raise
        m = fields.get("metrics", {})
        return ConsolidationRecord(edit_id=eid, status="failed", subject=subject, namespace=namespace, replaced=[],
                                   kept_awake=[r["id"] for r in wake], facts=m.get("facts", []),
                                   recall_before=m.get("recall_before", {}), recall_after=m.get("recall_after", {}),
                                   reason=reason)


class _Refused(Exception):
    """A sleep whose outcome the gate or the policy did not accept."""


def groups(mem: "ParametricMemory", namespace: str | None = None) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in mem.ledger.rows(status="applied", namespace=namespace):
        out.setdefault((r["namespace"], r["subject"]), []).append(r)
    return out


def _wake_since_last_sleep(rows: list[dict], namespace: str, subject: str) -> list[dict]:
    """The subject's wake rows (writes and rewrites, every status) after its last sleep, kept or refused."""
    here = [r for r in rows if r["namespace"] == namespace and r["subject"] == subject]
    last = max((r["id"] for r in here if r["origin"] == "sleep"), default=0)
    return [r for r in here if r["origin"] != "sleep" and r["id"] > last]


def _new_since_last_sleep(rows: list[dict], namespace: str, subject: str) -> list[dict]:
    """The subject's applied wake edits written after its last sleep, kept or refused. A wake edit
    kept beside a sleep delta (the default delta reads it) or left by a refused sleep has been
    slept on: sleeping again before anything new arrives would redo the same minutes of work."""
    return [r for r in _wake_since_last_sleep(rows, namespace, subject) if r["status"] == "applied"]


def _writes_since_last_sleep(rows: list[dict], namespace: str, subject: str) -> int:
    """The subject's writes after its last sleep whose facts are still held (applied, or carried by a later edit)."""
    return sum(r["status"] in HELD for r in _wake_since_last_sleep(rows, namespace, subject))


def consolidate(mem: "ParametricMemory", subject: str | None = None, namespace: str | None = None,
                new_only: bool = False) -> list[ConsolidationRecord]:
    """Sleep each subject (or `subject`) with live wake edits; `new_only`: only those with wake
    edits written since their last sleep (what the policy asks for)."""
    found = groups(mem, namespace)
    if new_only:
        rows = mem.ledger.rows()
        found = {k: v for k, v in found.items() if _new_since_last_sleep(rows, *k)}
    if subject is not None:
        found = {k: v for k, v in found.items() if k[1] == str(subject).strip()}
        if not found:
            from .errors import RoseMemoryError
            raise RoseMemoryError(f"no applied edits about {subject!r}; see `rose-memory ledger list`")
    out = []
    for (ns, subj), rows in found.items():
        rec = sleep_subject(mem, ns, subj, rows)
        if rec is not None:
            out.append(rec)
    return out


def after_write(mem: "ParametricMemory", write: "WriteRecord") -> int | None:
    """The ledger-triggered policy; returns the sleep that absorbed this write, if any."""
    pol = mem.config.policy
    if not pol.enabled:
        return None
    try:
        rows = mem.ledger.rows()
        last = max((r["id"] for r in rows if r["origin"] == "sleep"), default=0)
        writes = [r for r in rows if r["origin"] == "write" and r["status"] != "failed"]
        live_here = [r for r in rows if r["status"] == "applied" and r["subject"] == write.subject
                     and r["namespace"] == write.namespace]
        if pol.writes_per_subject and _writes_since_last_sleep(rows, write.namespace, write.subject) >= pol.writes_per_subject:
            sleep_subject(mem, write.namespace, write.subject, live_here)
        elif pol.every_n_writes and sum(r["id"] > last for r in writes) >= pol.every_n_writes:
            consolidate(mem, new_only=True)
        if pol.recheck_every and len(writes) % pol.recheck_every == 0:
            recheck(mem)
    except Exception as err:  # the write itself stands; the sleep row says what failed
        warnings.warn(f"consolidation after edit {write.edit_id} failed: {err}", stacklevel=3)
    return mem.ledger.get(write.edit_id)["consolidated_into"]


def _refused_and_unchanged(every: list[dict], namespace: str, subject: str) -> bool:
    """The subject's last sleep was refused (or failed) and no wake edit of it came after: the same
    facts would meet the same canary and gate (a repeated refusal cost a whole sleep, about 3 min
    on 2 CPU cores, in a sequential eval of 2026-12-01)."""
    sleeps = [r for r in every if r["namespace"] == namespace and r["subject"] == subject and r["origin"] == "sleep"]
    last = max(sleeps, key=lambda r: r["id"], default=None)
    return last is not None and last["status"] == "failed" and not _new_since_last_sleep(every, namespace, subject)


def recheck(mem: "ParametricMemory") -> None:
    """Re-verify the most recent subjects; sleep those whose recall in the edit's own form fell,
    unless their last sleep was refused and nothing of them changed since (a new write of the
    subject, or `consolidate` called for it, tries again)."""
    pol = mem.config.policy
    every = mem.ledger.rows()
    for (ns, subj), rows in list(groups(mem).items())[-pol.recheck_max_subjects:]:
        reqs = stored_requests(subj, list(_facts(rows).values()))
        mem._use(ns)
        recall = mem._measure(subj, reqs)
        low = recall["edit"] < pol.recheck_min_recall
        skip = low and _refused_and_unchanged(every, ns, subj)
        mem.ledger.note(rows[-1]["id"], {"recheck": {k: recall[k] for k in ("edit", "chat", "about")}
                                         | ({"sleep": "skipped: its last sleep was refused and nothing changed"} if skip else {})})
        if low and not skip:
            sleep_subject(mem, ns, subj, rows)
