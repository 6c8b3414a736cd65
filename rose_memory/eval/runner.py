"""The same-subject benchmark runner: write facts with a method, generate, score.

Modes (shared/benchmark/README.md):
- batch: every subject starts from the clean model; all its facts are written in one call, the
  subject's probes and the locality probes are answered, then the Delta is reverted.
- sequential: facts are written one call at a time, subject after subject, never reverted
  between subjects. Editing methods write through a ParametricMemory (temporary home), so the
  memory's own verification and consolidation policy act as they would for a chatbot.
  After each subject the locality probes (locality file + questions of the subjects not yet
  edited) and fluency are measured; efficacy, generalization and instruction of every subject
  are measured at the end, when all writes are in (with `end_sleep`, rose+consolidate first
  sleeps what is new since the policy's last round, as at the end of a conversation).

Methods `none` (unedited model), `in-context` (the facts written so far put in the context:
the system message for questions, a preamble for raw text; no weight change) and `retrieval`
(per probe, the facts of every written subject whose name the probe's prompt contains, worded
as `in-context` words them) live here. `rose+consolidate` is the memory's two stages: a RoSE
write, then the sleep stage (rose_memory.sleep) before the probes; in sequential mode the
memory's consolidation policy decides when it sleeps (for the single editing methods the
policy is off, so that `rose` measures the wake write alone). All other methods go through
`rose_memory.editing.edit` (batch) or the memory (sequential).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..editing import METHODS as EDIT_METHODS
from ..editing import edit, warm_up
from ..editing.config import config_for
from ..sleep import SleepConfig, consolidate_subject, scaled
from ..consolidation import sleep_stages
from ..errors import RoseMemoryError
from ..holding import HELD
from ..model import LoadedModel
from . import metrics as M
from .checkpoint import Checkpoint
from .data import BenchSubject, LocalityItem, fact_sentence, fill
from .generate import (
    BATCH_SIZE,
    MAX_NEW_TOKENS,
    check_chat_template,
    decode,
    encode,
    generate_ids,
    perplexity,
    render,
)

RUNNER_METHODS = ("in-context", "retrieval", "none")
SLEEP_METHODS = {"rose+consolidate": "rose"}  # method -> its wake method
ALL_METHODS = (*EDIT_METHODS, *SLEEP_METHODS, *RUNNER_METHODS)
MODES = ("batch", "sequential")
METRICS = ("efficacy", "generalization", "instruction", "confusion", "locality", "fluency", "name_fidelity")

# Fluency: generations on generic prompts (questions through the chat template, the rest raw).
GENERIC_PROMPTS = (
    "Once upon a time, in a small village by the sea,",
    "The most important thing about learning to cook is",
    "Scientists study the ocean because",
    "On weekends, many families like to",
    "The history of the printing press",
    "Why do people enjoy listening to music?",
    "What are some good ways to stay healthy?",
    "How does a bicycle work?",
)

# Perplexity before/after editing is measured on this text (report only; not in the JSON contract).
FIXED_TEXT = (
    "The town library opens at nine in the morning and closes at six in the evening. "
    "On Saturdays, volunteers read stories to children in the small room next to the garden. "
    "Most visitors come to borrow novels, but the library also keeps old maps, newspapers "
    "and a collection of photographs that show how the streets looked a hundred years ago."
)


def parse_methods(value: str | Sequence[str]) -> list[str]:
    """'rose,memit' or a list -> validated, de-duplicated method names."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(m).strip() for m in items if str(m).strip()]
    if not names:
        raise RoseMemoryError(f"no methods given; choose from {', '.join(ALL_METHODS)}")
    for name in names:
        if name not in ALL_METHODS:
            raise RoseMemoryError(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")
    if len(set(names)) != len(names):
        raise RoseMemoryError(f"method listed twice in {','.join(names)}; list each once")
    return names


def new_target_cache():
    """A cache of computed target values (editing.TargetCache), or None if editing offers none.

    Used in batch mode and shared by all methods of a run: every write starts from the clean
    weights, so a target computed for one method serves every method and ablation that uses
    the same (model, requests, config).
    """
    try:
        from ..editing import TargetCache  # type: ignore[attr-defined]
    except ImportError:
        return None
    return TargetCache()


@dataclass(frozen=True)
class Probe:
    subject: str
    metric: str  # efficacy | generalization | instruction | locality | fluency
    text: str  # the prompt, subject filled in
    chat: bool
    max_new: int
    target: str = ""
    others: tuple[str, ...] = ()  # targets of the subject's other facts (confusion)


@dataclass
class MethodResult:
    method: str
    metrics: dict[str, float | None]
    n_probes: dict[str, int]
    seconds_per_write: float
    perplexity_before: float
    perplexity_after: float
    records: list[dict] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)  # report only (e.g. what the memory did)
    sleeps: list[dict] = field(default_factory=list, repr=False)  # per sleep: subject, seconds, per-fact gate

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "metrics": {k: self.metrics[k] for k in METRICS},
            "n_probes": {k: int(self.n_probes[k]) for k in METRICS},
            "seconds_per_write": float(self.seconds_per_write),
        }


@dataclass
class EvalRun:
    model: str
    data: str
    mode: str
    results: list[MethodResult] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"model": self.model, "data": self.data, "mode": self.mode, "results": [r.to_json() for r in self.results]}


class Answerer:
    """Greedy answers per model state; a prompt is generated at most once per state.

    State "clean" (unedited weights) lives for the whole run: it gives the reference answers
    for locality and fluency, and the answers of `none`. Other states are dropped after use.
    """

    def __init__(self, lm: LoadedModel, batch_size: int = BATCH_SIZE, progress: bool = True):
        self.lm = lm
        self.batch_size = batch_size
        self.progress = progress
        # state -> (rendered prompt, chat) -> (answer ids, tokens asked for)
        self.memo: dict[str, dict[tuple[str, bool], tuple[list[int], int]]] = {}
        self.generated = 0  # prompts generated, all states (tests check that nothing runs twice)

    @staticmethod
    def _enough(entry: tuple[list[int], int] | None, want: int) -> bool:
        return entry is not None and (entry[1] >= want or len(entry[0]) < entry[1])

    def ask(self, state: str, probes: Sequence[Probe], context: Sequence[str] = ()) -> list[tuple[str, list[int]]]:
        """(rendered prompt, answer ids cut to the probe's max_new) for each probe."""
        memo = self.memo.setdefault(state, {})
        keys = [(render(self.lm, p.text, p.chat, context), p.chat) for p in probes]
        missing: dict[int, dict[tuple[str, bool], None]] = {}
        for key, p in zip(keys, probes):
            if not self._enough(memo.get(key), p.max_new):
                missing.setdefault(p.max_new, {})[key] = None
        for n in sorted(missing, reverse=True):  # longest first: it also serves shorter requests
            todo = [k for k in missing[n] if not self._enough(memo.get(k), n)]
            if not todo:
                continue
            ids = generate_ids(
                self.lm,
                [encode(self.lm, r, chat) for r, chat in todo],
                max_new_tokens=n,
                batch_size=self.batch_size,
                progress=self.progress,
                desc=f"generating ({n} tokens)",
            )
            self.generated += len(todo)
            for key, answer in zip(todo, ids):
                memo[key] = (answer, n)
        return [(key[0], memo[key][0][: p.max_new]) for key, p in zip(keys, probes)]

    def drop(self, state: str) -> None:
        self.memo.pop(state, None)


def main_probes(subject: BenchSubject) -> list[Probe]:
    out = []
    for f in subject.facts:
        others = tuple(g.target for g in subject.facts if g is not f)
        out.append(Probe(subject.name, "efficacy", fill(f.prompt, subject.name), False, MAX_NEW_TOKENS, f.target, others))
        for p in f.paraphrases:
            out.append(Probe(subject.name, "generalization", fill(p, subject.name), False, MAX_NEW_TOKENS, f.target, others))
        for q in f.questions:
            out.append(Probe(subject.name, "instruction", fill(q, subject.name), True, MAX_NEW_TOKENS, f.target, others))
    return out


def locality_probes(items: Sequence[LocalityItem], unedited: Sequence[BenchSubject], question_tokens: int) -> list[Probe]:
    """The locality file's prompts, then the questions of `unedited` subjects (all compared on 8 tokens)."""
    out = [Probe("", "locality", it.prompt, it.chat, M.LOCALITY_TOKENS) for it in items]
    for s in unedited:
        out += [Probe(s.name, "locality", q, True, question_tokens) for q in s.questions()]
    return out


def fluency_probes() -> list[Probe]:
    return [Probe("", "fluency", t, t.rstrip().endswith("?"), MAX_NEW_TOKENS) for t in GENERIC_PROMPTS]


class _Tally:
    """Per-method accumulation of probe outcomes and answer records."""

    def __init__(self, method: str, keep_records: bool):
        self.method = method
        self.hits: dict[str, list[bool]] = {m: [] for m in METRICS if m != "fluency"}
        self.fluency_after: list[str] = []
        self.fluency_before: list[str] = []
        self.ppl_after: list[float] = []
        self.notes: list[str] = []
        self.records: list[dict] | None = [] if keep_records else None

    def to_state(self) -> dict:
        """Everything measured so far (a checkpoint's `tally`)."""
        return {k: getattr(self, k) for k in ("hits", "fluency_after", "fluency_before", "ppl_after", "notes", "records")}

    def restore(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def add(self, subject: str, metric: str, prompt: str, answer: str, target, hit) -> None:
        if metric in self.hits:
            self.hits[metric].append(bool(hit))
        if self.records is not None:
            self.records.append(
                {"method": self.method, "subject": subject, "metric": metric, "prompt": prompt,
                 "answer": answer, "target": target, "hit": hit}
            )

    def result(self, seconds_per_write: float, ppl_before: float) -> MethodResult:
        values: dict[str, float | None] = {}
        counts: dict[str, int] = {}
        for m in METRICS:
            if m == "fluency":
                counts[m] = len(self.fluency_after)
                ratio = M.fluency_ratio(self.fluency_after, self.fluency_before) if counts[m] else None
                values[m] = ratio if ratio is not None and math.isfinite(ratio) else None
            else:
                counts[m] = len(self.hits[m])
                values[m] = sum(self.hits[m]) / counts[m] if counts[m] else None
        ppl_after = sum(self.ppl_after) / len(self.ppl_after) if self.ppl_after else ppl_before
        return MethodResult(
            method=self.method, metrics=values, n_probes=counts, seconds_per_write=seconds_per_write,
            perplexity_before=ppl_before, perplexity_after=ppl_after, records=self.records or [],
            notes=self.notes,
        )


class Runner:
    def __init__(
        self,
        lm: LoadedModel,
        subjects: Sequence[BenchSubject],
        locality: Sequence[LocalityItem] = (),
        mode: str = "batch",
        seed: int = 0,
        progress: bool = True,
        keep_records: bool = False,
        batch_size: int = BATCH_SIZE,
        edit_fn: Callable | None = None,
        memory_options: dict | None = None,
        edit_config: dict | None = None,
        sleep_config: dict | None = None,
        checkpoint: str | os.PathLike | None = None,
        end_sleep: bool = False,
    ):
        if mode not in MODES:
            raise RoseMemoryError(f"unknown mode {mode!r}; use batch or sequential")
        if end_sleep and mode != "sequential":
            raise RoseMemoryError("--end-sleep is for sequential mode; in batch mode every subject sleeps after its write")
        if not subjects:
            raise RoseMemoryError("no subjects to evaluate")
        check_chat_template(lm)
        self.lm = lm
        self.subjects = list(subjects)
        self.locality = list(locality)
        self.mode = mode
        self.seed = seed
        self.progress = progress
        self.keep_records = keep_records
        self.edit_fn = edit_fn or edit  # batch mode; sequential mode writes through ParametricMemory
        self.memory_options = dict(memory_options or {})  # e.g. verify=..., policy=... (sequential mode)
        # EditConfig overrides for every editing method (e.g. {"stage_steps": 8}); checked now.
        # The run's seed is the edits' seed too (their model-sampled prefixes and key statistics),
        # unless the overrides name one: a new --seed is a new draw of the whole run.
        self.edit_config = {"seed": seed, **(edit_config or {})}
        config_for(lm.model, self.edit_config)
        self.memory_options["edit_config"] = {**self.memory_options.get("edit_config", {}), **self.edit_config}
        # SleepConfig overrides (rose+consolidate); the run's seed seeds the sleep too
        self.sleep_config = SleepConfig.model_validate({"seed": seed, **(sleep_config or {})})
        self.answerer = Answerer(lm, batch_size=batch_size, progress=progress)
        self.target_cache = new_target_cache()
        self.ppl_before: float | None = None
        self._question_tokens = M.LOCALITY_TOKENS
        self._step = 0
        # Sequential rose+consolidate: after the last write, sleep every subject with a wake edit since
        # its last sleep, as an agent does when a conversation ends; off, the policy's cadence alone
        # decides, and the subjects told after its last round answer from their wake edits.
        self.end_sleep = end_sleep
        # progress on disk after each subject (checkpoint.py); None: a killed run starts over
        self.checkpoint = None if checkpoint is None else Checkpoint(checkpoint, self._settings())

    def _settings(self) -> dict:
        """What makes this run what it is: a checkpoint made with other settings is not continued."""
        from .. import __version__

        return {"version": __version__, "model": self.lm.cache_id, "mode": self.mode, "seed": self.seed,
                "subjects": [dataclasses.asdict(s) for s in self.subjects],
                "locality": [dataclasses.asdict(it) for it in self.locality],
                "edit_config": self.edit_config, "sleep_config": self.sleep_config.model_dump(),
                "memory_options": self.memory_options, "keep_records": self.keep_records,
                # named only when on, so that checkpoints made before the option existed still match
                **({"end_sleep": True} if self.end_sleep else {})}

    # ---- the whole run -------------------------------------------------------------------
    def run(self, methods: Sequence[str], on_result: Callable[[MethodResult], None] | None = None) -> list[MethodResult]:
        methods = parse_methods(list(methods))
        # The clean model answers the questions with the full length if `none` is measured, so
        # that no prompt is generated twice on the clean weights.
        self._question_tokens = MAX_NEW_TOKENS if "none" in methods else M.LOCALITY_TOKENS
        self._reference_pass()
        results = []
        for method in methods:
            done = self.checkpoint.finished(method) if self.checkpoint is not None else None
            result = done if done is not None else self.run_method(method)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    def _reference_pass(self) -> None:
        """Answers of the unedited model for every locality and fluency probe, computed once."""
        if self.ppl_before is None:
            self.ppl_before = perplexity(self.lm, FIXED_TEXT)
        probes = locality_probes(self.locality, self.subjects, self._question_tokens) + fluency_probes()
        self.answerer.ask("clean", probes)

    def run_method(self, method: str) -> MethodResult:
        parse_methods([method])
        if self.ppl_before is None:
            self._reference_pass()
        random.seed(self.seed)
        torch.manual_seed(self.seed)
        tally = _Tally(method, self.keep_records)
        wake = SLEEP_METHODS.get(method, method)
        if wake in EDIT_METHODS:  # one-off statistics and projectors, outside the timed writes
            warm_up(self.lm, wake, self.edit_config, progress=self.progress)
        self._write_seconds, self._writes = 0.0, 0
        self._sleeps: list[dict] = []
        start = 0
        saved = self.checkpoint.progress(method) if self.checkpoint is not None else None
        if saved is not None:
            start = saved["next"]
            tally.restore(saved["tally"])
            self._write_seconds, self._writes, self._sleeps = saved["write_seconds"], saved["writes"], saved["sleeps"]
            tally.notes.append(f"continued from the checkpoint at subject {start + 1} of {len(self.subjects)} "
                               f"(the run was stopped and started again)")
        if self.mode == "batch":
            self._batch(method, tally, start)
        else:
            self._sequential(method, tally, start)
        spw = self._write_seconds / self._writes if self._writes else 0.0
        if self._sleeps:
            secs = [x["seconds"] for x in self._sleeps]
            facts = [f for x in self._sleeps for f in x["facts"]]
            subjects = {x["subject"] for x in self._sleeps}
            gone = sum(x.get("status") == "superseded" for x in self._sleeps)
            later = f" ({gone} later superseded by a write about the same subject)" if gone else ""
            tally.notes.append(f"sleep: {len(secs)} sleep(s) of {len(subjects)} subject(s), "
                               f"{sum(secs) / len(secs):.1f} s each (max {max(secs):.1f}); "
                               f"{sum(f['stage'] == 'consolidated' for f in facts)} of {len(facts)} facts passed the "
                               f"gate alone; {sum(x['kept'] for x in self._sleeps)} sleeps kept{later}; "
                               f"{sum(x['wake_removed'] for x in self._sleeps)} wake edits removed")
        result = tally.result(spw, self.ppl_before)
        result.sleeps = self._sleeps
        if self.checkpoint is not None:
            self.checkpoint.save_finished(result)
        return result

    def _save_progress(self, method: str, next_subject: int, tally: _Tally) -> None:
        if self.checkpoint is not None:
            self.checkpoint.save_progress(method, next_subject, tally.to_state(), self._write_seconds, self._writes,
                                          self._sleeps)

    # ---- writing -------------------------------------------------------------------------
    def _write(self, method: str, requests: list) -> object:
        start = time.perf_counter()
        delta = self.edit_fn(self.lm, requests, method=method, progress=False, cache=self.target_cache,
                             config=self.edit_config)
        delta.apply(self.lm.model)
        self._write_seconds += time.perf_counter() - start
        self._writes += 1
        return delta

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, **({} if self.progress else {"disable": True}))

    def _new_state(self, method: str) -> str:
        if method == "none":
            return "clean"
        self._step += 1
        return f"{method}#{self._step}"

    def _batch(self, method: str, tally: _Tally, start: int = 0) -> None:
        bar = self._bar(len(self.subjects), f"{method} (batch)")
        bar.update(start)
        for i, subject in enumerate(self.subjects[start:], start):
            delta, context = None, ()
            state = self._new_state(method)
            applied: list = []
            try:
                if method == "in-context":
                    context = tuple(fact_sentence(subject.name, f) for f in subject.facts)
                elif method == "retrieval":
                    context = {subject.name: tuple(fact_sentence(subject.name, f) for f in subject.facts)}
                elif method in SLEEP_METHODS:
                    delta = self._write(SLEEP_METHODS[method], subject.requests())
                    applied = self._sleep(subject, delta)
                    delta = None
                elif method != "none":
                    delta = self._write(method, subject.requests())
                others = [s for s in self.subjects if s is not subject]
                self._measure(tally, state, context, subject.name, [subject], others)
            finally:
                if delta is not None:
                    delta.revert(self.lm.model)
                for d in applied:
                    d.revert(self.lm.model)
                if state != "clean":
                    self.answerer.drop(state)
            self._save_progress(method, i + 1, tally)
            bar.update(1)
        bar.close()

    def _sleep(self, subject: BenchSubject, wake) -> list:
        """The sleep stage on one subject's applied wake delta; returns the deltas left applied."""
        held = {"wake": wake, "sleep": None}

        def set_weights(scales: list[float], delta) -> None:
            for key in ("wake", "sleep"):
                if held[key] is not None and held[key].is_applied:
                    held[key].revert(self.lm.model)
            held["wake"] = scaled(wake, scales[0]) if scales[0] != 1.0 else wake
            held["wake"].apply(self.lm.model)
            held["sleep"] = delta
            if delta is not None:
                delta.apply(self.lm.model)

        reqs = subject.requests()
        stages: list[dict] = []  # seconds since the sleep began at the end of each stage: where a sleep's time goes
        try:
            out = consolidate_subject(self.lm, reqs, [list(range(len(reqs)))], set_weights, self.sleep_config,
                                      on_step=lambda kind, data: stages.append({"stage": kind, "seconds": data["seconds"]}))
        except BaseException:
            for d in held.values():
                if d is not None and d.is_applied:
                    d.revert(self.lm.model)
            raise
        self._sleeps.append({"subject": subject.name, "seconds": round(out.seconds, 1), "facts": out.facts,
                             "steps": out.steps, "wake_removed": int(out.wake_scales[0] == 0.0),
                             "kept": out.delta is not None, "reason": out.reason, "canary": out.canary,
                             "stages": stages})
        return [d for d in held.values() if d is not None and d.is_applied]

    def _sequential(self, method: str, tally: _Tally, start: int = 0) -> None:
        """One fact per write, subject after subject, never reverted.

        Editing methods write through a ParametricMemory in a temporary home (the checkpoint's
        folder when there is one), so its verification and its consolidation policy act as they
        do for a chatbot; the memory returns the weights to the base model when it is closed.
        From subject `start` on (a continued run): the memory reopened holds the earlier writes.
        """
        context: list[str] = []
        by_name: dict[str, list[str]] = {}  # retrieval: each written subject's sentences
        if method in ("in-context", "retrieval"):  # a continued run: the facts told before `start`
            for subject in self.subjects[:start]:
                for fact in subject.facts:
                    context.append(fact_sentence(subject.name, fact))
                    by_name.setdefault(subject.name, []).append(context[-1])
        memory, home = None, None
        if method not in RUNNER_METHODS:
            from ..memory import ParametricMemory

            if self.checkpoint is not None:
                home_path = str(self.checkpoint.memory_home(method))
            else:
                home = tempfile.TemporaryDirectory(prefix="rose-memory-eval-")
                home_path = home.name
            options = dict(self.memory_options)
            if method not in SLEEP_METHODS:  # the wake write alone; rose+consolidate sleeps as the policy says
                options["policy"] = {**options.get("policy", {}), "enabled": False}
            options["sleep"] = self.sleep_config.model_dump()
            # The eval measures what each write does to unrelated prompts itself: the memory's write guard
            # would turn some writes into failures and hide it, and its rate limit would refuse a fast GPU's writes.
            options.setdefault("guard", {"enabled": False})
            options.setdefault("limits", {"max_writes_per_minute": None})
            memory = ParametricMemory(home=home_path, model=self.lm, method=SLEEP_METHODS.get(method, method),
                                      progress=False, **options)
        bar = self._bar(sum(len(s.facts) for s in self.subjects), f"{method} (sequential)")
        bar.update(sum(len(s.facts) for s in self.subjects[:start]))
        try:
            for i, subject in enumerate(self.subjects[start:], start):
                for fact in subject.facts:
                    if method in ("in-context", "retrieval"):
                        context.append(fact_sentence(subject.name, fact))
                        by_name.setdefault(subject.name, []).append(context[-1])
                    elif memory is not None:
                        start = time.perf_counter()
                        record = memory.write(subject.name, [{"relation": fact.prompt, "object": fact.target}])
                        self._write_seconds += time.perf_counter() - start
                        self._writes += 1
                        if record.status != "applied":
                            tally.notes.append(f"write of {fact_sentence(subject.name, fact)!r} {record.status}: "
                                               f"{record.reason}")
                    bar.update(1)
                last = i == len(self.subjects) - 1
                if last and self.end_sleep and memory is not None and method in SLEEP_METHODS:
                    self._end_sleep(memory, tally)
                state = self._new_state(method)
                # The last state also answers every subject's probes: all writes are in.
                told = tuple(context)
                if method == "retrieval":  # each subject's facts, found by its name in the probe
                    told = {name: tuple(sentences) for name, sentences in by_name.items()}
                self._measure(tally, state, told, subject.name, self.subjects if last else [],
                              self.subjects[i + 1 :])
                if state != "clean":
                    self.answerer.drop(state)
                self._save_progress(method, i + 1, tally)
            if memory is not None:
                rows = memory.edits()
                slept = [r for r in rows if r["origin"] == "sleep"]
                live = sum(r["status"] == "applied" for r in rows)
                tally.notes.append(f"memory: {self._writes} writes, {len(slept)} sleeps "
                                   f"({sum(r['status'] != 'failed' for r in slept)} applied), {live} live edits at the end")
                self._sleeps.extend(ledger_sleeps(rows, memory.ledger.events))
        finally:
            bar.close()
            if memory is not None:
                memory.close()
            if home is not None:
                home.cleanup()

    @staticmethod
    def _end_sleep(memory, tally: _Tally) -> None:
        """The end of the conversation: sleep what is new since the policy's last round (a continued
        run that stopped during it sleeps only the subjects not yet slept)."""
        began = time.perf_counter()
        records = memory.consolidate()
        kept = sum(r.status == "applied" for r in records)
        tally.notes.append(f"end sleep: after the last write, {len(records)} subject(s) with wake edits since their "
                           f"last sleep slept ({kept} kept) in {time.perf_counter() - began:.0f} s")

    # ---- measuring one model state ---------------------------------------------------------
    def _measure(
        self,
        tally: _Tally,
        state: str,
        context: Sequence[str] | dict[str, Sequence[str]],
        written: str,
        subjects: Sequence[BenchSubject],
        unedited: Sequence[BenchSubject],
    ) -> None:
        """Answer and score, in the current model state: `subjects`' own probes, fluency, and
        locality (the locality file plus the questions of `unedited`). A dict context (retrieval)
        gives each probe the sentences of every name its prompt contains."""
        own = [p for s in subjects for p in main_probes(s)]
        loc = locality_probes(self.locality, unedited, M.LOCALITY_TOKENS)
        flu = fluency_probes()
        probes = own + loc + flu
        answers = self._answers(state, probes, context)
        refs = self.answerer.ask("clean", loc + flu)  # all cached by the reference pass
        lm = self.lm

        for p, (prompt, ids) in zip(own, answers[: len(own)]):
            text = decode(lm, ids)
            tally.add(p.subject, p.metric, prompt, text, p.target, M.hit(text, p.target))
            if p.metric == "instruction":
                tally.add(p.subject, "confusion", prompt, text, list(p.others), M.confused(text, p.target, p.others))
                named = M.name_fidelity_probe(text, p.subject)
                if named is not None:
                    tally.add(p.subject, "name_fidelity", prompt, text, p.subject, named)
        for p, (prompt, ids), (_, ref) in zip(loc, answers[len(own) : len(own) + len(loc)], refs[: len(loc)]):
            same = M.same_start(ref, ids)
            tally.add(written, "locality", prompt, decode(lm, ids[: M.LOCALITY_TOKENS]),
                      decode(lm, ref[: M.LOCALITY_TOKENS]), same)
        for p, (prompt, ids), (_, ref) in zip(flu, answers[len(own) + len(loc) :], refs[len(loc) :]):
            after, before = decode(lm, ids), decode(lm, ref)
            tally.fluency_after.append(after)
            tally.fluency_before.append(before)
            tally.add(written, "fluency", prompt, after, before, None)
        if state == "clean" or isinstance(context, dict):  # retrieval: the fixed text names nobody
            tally.ppl_after.append(self.ppl_before)
        else:
            tally.ppl_after.append(perplexity(lm, FIXED_TEXT, context))

    def _answers(self, state: str, probes: list[Probe], context) -> list[tuple[str, list[int]]]:
        if not isinstance(context, dict):
            return self.answerer.ask(state, probes, context)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, p in enumerate(probes):
            told = tuple(c for name, sentences in context.items() if name in p.text for c in sentences)
            groups.setdefault(told, []).append(i)
        out: list = [None] * len(probes)
        for told, idx in groups.items():
            # the weights are the clean ones: a probe given no facts is the clean model's answer
            answers = self.answerer.ask(state if told else "clean", [probes[i] for i in idx], told)
            for i, a in zip(idx, answers):
                out[i] = a
        return out


def ledger_sleeps(rows: list[dict], events_of: Callable[[int], list[dict]] | None = None) -> list[dict]:
    """The sleeps.json entries of a memory's sleep rows (`rows`: all its ledger rows; `events_of`,
    the ledger's `events`, gives each entry the `stages` batch mode reports).

    kept: the sleep was applied when it ran; "consolidated" (replaced by a later sleep of the
    subject) and "superseded" (a later write of the subject carried its facts into a new wake
    edit) rows were, so they count as kept and `status` says what became of them."""
    out = []
    for r in rows:
        if r["origin"] != "sleep":
            continue
        m = r["metrics"] or {}
        out.append({"subject": r["subject"], "seconds": m.get("seconds", 0.0), "facts": m.get("facts", []),
                    "kept": r["status"] in HELD, "status": r["status"], "reason": r["reason"],
                    "steps": m.get("steps", []),
                    "wake_removed": sum(x["consolidated_into"] == r["id"] and x["origin"] != "sleep" for x in rows),
                    "stages": sleep_stages(events_of(r["id"])) if events_of is not None else []})
    return out


def run_eval(
    lm: LoadedModel,
    subjects: Sequence[BenchSubject],
    locality: Sequence[LocalityItem],
    methods: Sequence[str] | str,
    mode: str = "batch",
    seed: int = 0,
    progress: bool = True,
    keep_records: bool = False,
    data_name: str = "",
    on_result: Callable[[MethodResult], None] | None = None,
) -> EvalRun:
    names = parse_methods(methods)
    runner = Runner(lm, subjects, locality, mode=mode, seed=seed, progress=progress, keep_records=keep_records)
    run = EvalRun(model=lm.name, data=data_name, mode=mode)

    def collect(result: MethodResult) -> None:
        run.results.append(result)
        if on_result is not None:
            on_result(result)

    runner.run(names, on_result=collect)
    return run
