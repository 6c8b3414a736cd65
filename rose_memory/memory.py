"""ParametricMemory: facts written into the live model's weights, every edit recorded in a ledger.

The live weights are always a function of the ledger: for each edited matrix,
W = W_base + sum of the applied deltas of the active namespace that touch it (ledger order).
A namespace is a set of deltas, not a label: every operation names its namespace (default
"default") and the weights are switched to base + that namespace's applied deltas first, so
what one namespace wrote never answers in another. The memory keeps a copy of the base value
of every matrix it has edited, so writing, superseding, forgetting and switching namespace
all recompose W from that copy: a forgotten edit leaves the weights bit-for-bit at base, and
a crash can never leave a half-written matrix behind (on open the weights are recomposed).

Several processes may open one home. Each operation holds the home's lock file (filelock)
for its duration and first brings its weights up to date with the ledger (edits another
process applied or forgot since), so writes from two processes interleave without loss; a
process that finds the home busy says so on stderr and waits up to `lock_timeout` seconds.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from .editing.api import edit
from .editing.delta import Delta
from .editing.targets import TargetCache
from .errors import RoseMemoryError
from .arch import spec_for
from . import consolidation, faults, holding
from .progress import library_bars, stage
from .consolidation import ConsolidationPolicy, ConsolidationRecord
from .facts import EditRequest, check_namespace, make_facts, stored_requests
from .guard import canary_answers, check_canaries, check_rate, check_special_tokens, is_protected
from .home_lock import DEFAULT_LOCK_TIMEOUT, HomeLock, check_home, default_home
from .memory_config import CANARIES, GuardConfig, Limits, MemoryConfig, VerifyConfig, WriteRecord, load_config
from .model import LoadedModel, load_cached, plain_float, resolve_device, resolve_dtype
from .recall import chat_text, decode, greedy, measure, passes
from .stores.deltas import DeltaStore, delta_name, save_lora_adapter
from .stores.ledger import Ledger, resolve_key
from .text import mentions  # noqa: F401  (benchmarks import it from here)

# The settings and home helpers are imported from here too. `edit` and `load_cached` are looked up in
# this module when called, so that tests can replace them here.
__all__ = ["CANARIES", "DEFAULT_LOCK_TIMEOUT", "GuardConfig", "Limits", "MemoryConfig", "NamespaceHold",
           "ParametricMemory", "VerifyConfig", "WriteRecord", "check_home", "default_home"]


class _Rejected(Exception):
    """A write whose verification fell below the configured recall."""


def _facts_of(reqs: list[EditRequest]) -> list[dict]:
    return [{"prompt": r.prompt, "object": r.target} for r in reqs]


def _same_sources(held: tuple, wanted: tuple) -> bool:
    """Whether a matrix holding `held` deltas already holds `wanted`: same ids and scales, the same
    Delta objects (compared by identity; the tuples keep them alive, so an id is never reused)."""
    return len(held) == len(wanted) and all(h[0] == w[0] and h[1] == w[1] and h[2] is w[2] for h, w in zip(held, wanted))


class ParametricMemory:
    """A memory whose contents are edits in the weights of `lm`, recorded in `home`.

    `model` is None (the home's model, else the embedded default), a model name or path, or a
    LoadedModel. While the memory is open it owns that model's weights; `close()` returns
    them to the base model. `device` and `dtype` (as `load_model` takes them: auto is CUDA with
    bf16 weights where present, else the CPU in float32) apply when the memory loads the model
    itself; a LoadedModel is used as it is. `limits`, `guard`, `lock_timeout` and `joint_subject`
    (a write carries the subject's other live facts into its edit; see `MemoryConfig`) update the home's
    stored settings, as `verify` and `policy` do. `progress=True` says on stderr what a
    slow step is doing (loading the model, editing, verifying, a sleep, an export), with bars.
    """

    def __init__(self, home: str | os.PathLike | None = None, model: str | LoadedModel | None = None,
                 method: str | None = None, *, edit_config: dict | None = None,
                 verify: VerifyConfig | dict | None = None, policy: ConsolidationPolicy | dict | None = None,
                 sleep: dict | None = None, limits: Limits | dict | None = None, guard: GuardConfig | dict | None = None,
                 lock_timeout: float | None = None, joint_subject: bool | None = None, progress: bool = False,
                 device: str = "auto", dtype: str = "auto"):
        if not isinstance(model, LoadedModel):   # a bad device or dtype fails before the home is touched
            resolve_dtype(dtype, resolve_device(device))
        self._device, self._dtype = device, dtype
        self.home = check_home(Path(home).expanduser() if home is not None else default_home())
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RoseMemoryError(f"cannot create the memory home {self.home}: {err.strerror or err}") from None
        self.lock = threading.RLock()
        self.progress = progress
        self.lm: LoadedModel | None = None
        self.ledger: Ledger | None = None
        self.namespace = "default"                    # the namespace whose deltas the weights hold now
        self._base: dict[str, torch.Tensor] = {}      # base value of every matrix we touched
        self._sources: dict[str, tuple] = {}          # which deltas (id, scale, object) each matrix holds now
        self._sets: dict[str, dict[int, Delta]] = {}  # applied deltas per namespace, ledger order
        self._synced: int | None = None               # the ledger state (Ledger.state) the sets were read at
        self._canaries: dict[tuple, list[list[int]]] = {}
        self._home_lock = HomeLock(self.home, lock_timeout)
        try:
            with self.lock, self._home_lock.holding():
                self.config = load_config(self.home, model, method, edit_config, verify, policy, sleep,
                                          {"limits": limits, "guard": guard, "lock_timeout": lock_timeout,
                                           "joint_subject": joint_subject})
                self._home_lock.timeout = self.config.lock_timeout
                key = resolve_key(self.config.ledger_key_file)
                self.ledger = Ledger(self.home / "ledger.sqlite", key=key)
                self.ledger.check_writable()
                self.store = DeltaStore(self.home / "deltas")
            self.lm = self._load_model(model)
            with self._exclusive():
                pass  # recovers from a crash and sets the weights to base + the default namespace's deltas
        except BaseException:
            self.close()
            raise

    # -- opening --------------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self, namespace: str | None = None):
        """Hold the memory (threads and processes), weights in step with the ledger, `namespace` active."""
        with self.lock:
            self._check_open()
            with self._home_lock.holding():
                self._sync()
                if namespace is not None:
                    self._use(namespace)
                yield
                if self._home_lock.held == 1:  # our own changes are in the sets already: no re-read next time
                    self._synced = self.ledger.state()

    def _load_model(self, model) -> LoadedModel:
        if isinstance(model, LoadedModel):
            lm = model
        else:
            device = resolve_device(self._device)
            stage(f"loading the model {self.config.model} ({device}, {resolve_dtype(self._dtype, device)})", self.progress)
            with library_bars(self.progress):
                lm = load_cached(self.config.model, self._device, self._dtype)
        owner = getattr(lm.model, "_rose_memory_home", None)
        if owner is not None:
            raise RoseMemoryError(f"this model's weights are held by the open memory at {owner}; close that one first")
        lm.model._rose_memory_home = str(self.home)
        return lm

    def _sync(self) -> None:
        """Bring the weights in step with the ledger, which this or another process may have changed.

        Called with the home lock held, so a `pending` row here was left by a process that died in
        the middle of a write or a sleep: it is marked failed and its files removed. Then every
        applied delta is loaded (each file checked against its sha256 before any weight changes) and
        the active namespace's set composed.
        """
        state = self.ledger.state()
        if state == self._synced:
            return
        pending = self.ledger.rows(status="pending")
        for row in pending:
            (self.store.root / delta_name(row["id"])).unlink(missing_ok=True)
            self.ledger.transition([(row["id"], "failed", {"reason": "interrupted before it was applied"})])
        if pending or self._synced is None:
            self.store.clean_tmp()
        loaded = {i: d for s in self._sets.values() for i, d in s.items()}
        sets: dict[str, dict[int, Delta]] = {}
        for r in self.ledger.rows(status="applied"):
            delta = loaded[r["id"]] if r["id"] in loaded else self.store.load(r["delta_file"], r["delta_sha256"])
            sets.setdefault(r["namespace"], {})[r["id"]] = delta
        self._compose(sets.get(self.namespace, {}))  # all deltas loaded and checked before any weight changes
        self._sets = sets
        self._synced = self.ledger.state()

    # -- namespaces -----------------------------------------------------------------------------

    @property
    def live(self) -> dict[int, Delta]:
        """The applied deltas of the active namespace (what the weights hold), ledger order."""
        return self._sets.get(self.namespace, {})

    @live.setter
    def live(self, deltas: dict[int, Delta]) -> None:
        self._sets[self.namespace] = dict(sorted(deltas.items()))  # ledger order, whatever order they came in

    def _use(self, namespace: str) -> None:
        """Switch the weights to base + `namespace`'s applied deltas (exact; only the matrices that differ)."""
        namespace = check_namespace(namespace)
        if namespace != self.namespace:
            self._compose(self._sets.get(namespace, {}))
            self.namespace = namespace

    def use(self, namespace: str = "default") -> None:
        """Make `namespace` the active one: the weights become base + its applied deltas."""
        with self._exclusive(check_namespace(namespace)):
            pass

    def holding(self, namespace: str = "default") -> "NamespaceHold":
        """A reusable context manager holding the memory with `namespace`'s weights in place, for code that
        generates with `self.lm` itself (the agents' chat model)."""
        return NamespaceHold(self, check_namespace(namespace))

    def namespaces(self) -> list[str]:
        """Namespaces with applied edits."""
        with self._exclusive():
            return [ns for ns, deltas in self._sets.items() if deltas]

    # -- the weights ----------------------------------------------------------------------------

    def _compose(self, deltas: dict[int, Delta], scales: dict[int, float] | None = None) -> None:
        """Set every edited matrix to its base value plus `deltas` (in the given order), edit i times
        `scales[i]` where given (the sleep stage scales wake edits down on their way out)."""
        scales = {i: s for i, s in (scales or {}).items() if s != 1.0}
        params = dict(self.lm.model.named_parameters())
        by_name: dict[str, list[int]] = {}
        for eid, d in deltas.items():
            for name in d.factors:
                if name not in params:
                    raise RoseMemoryError(f"edit {eid} changes {name!r}, which this model lacks; was it written for another model?")
                by_name.setdefault(name, []).append(eid)
        with torch.no_grad():
            for name in set(by_name) | set(self._base):
                ids = tuple(by_name.get(name, ()))
                # the Delta object is part of the key: the sleep stage passes scaled copies of its delta
                # under one id, and keyed by (id, scale) alone they were skipped as already applied
                key = tuple((i, scales.get(i, 1.0), deltas[i]) for i in ids)
                if _same_sources(self._sources.get(name, ()), key):
                    continue
                w = params[name]
                if name not in self._base:
                    self._base[name] = w.detach().clone()
                base = self._base[name]
                self._sources.pop(name, None)  # a crash of the copy below leaves no false record
                if not ids:
                    w.copy_(base)
                else:
                    u = torch.cat([deltas[i].factors[name][0].float() * scales.get(i, 1.0) for i in ids], 1)  # [d_out, R]
                    v = torch.cat([deltas[i].factors[name][1].float() for i in ids], 1)  # [d_in, R]
                    upd = (u @ v.T).to(w.device)
                    w.copy_(base.float() + (upd if upd.shape == w.shape else upd.T))  # Conv1D: [d_in, d_out]
                self._sources[name] = key

    def _edit(self, reqs: list[EditRequest], live: dict[int, Delta]) -> Delta:
        """The Delta of `reqs`, computed on the weights of the `live` edits."""
        cache = None
        if self.config.method == "alphaedit":
            # AlphaEdit's sequential setting: the update avoids the keys of the edits that are
            # live (the paper's K_p K_p^T of past edits; a forgotten edit no longer counts).
            cache = TargetCache(sequential=True)
            for d in live.values():
                for layer, k in d.keys.items():
                    cache.preserved[layer] = cache.preserved.get(layer, 0) + k.T @ k
        return edit(self.lm, reqs, method=self.config.method, config=self.config.edit or None,
                    progress=self.progress, cache=cache)

    # -- verification and the write guard (rose_memory/recall.py, rose_memory/guard.py) ------------

    def _measure(self, subject: str, reqs: list[EditRequest]) -> dict:
        """Recall of each fact in its edit form and in chat, and in a general question about the subject
        (a method so that tests and benchmarks can replace it)."""
        return measure(self.lm, self.config.verify, subject, reqs)

    def _canary_answers(self, key: tuple) -> list[list[int]]:
        """Greedy answers to the guard's canary prompts on the weights as they are now (`key`: which deltas);
        a method so that tests can replace it."""
        return canary_answers(self.lm, self.config.guard, self._canaries, key)

    # -- writing --------------------------------------------------------------------------------

    def write(self, subject: str, facts: list, namespace: str = "default", *, via: str = "api") -> WriteRecord:
        """Write facts about one subject as one same-subject edit into `namespace`; see the module docstring.

        Facts are (relation, object) pairs, Fact objects or {"relation", "object"} dicts.
        A fact whose relation the subject already holds replaces it (the old edit is superseded;
        its other facts are carried into the new edit); with `joint_subject` (the default) every
        live edit of the subject is superseded so, its facts carried (`holding.carry`). `via="tool"` marks a write an agent asked
        for: the guard's protected subjects refuse it.
        """
        namespace = check_namespace(namespace)
        lim = self.config.limits
        reqs = make_facts(subject, facts, max_subject_chars=lim.max_subject_chars, max_text_chars=lim.max_text_chars,
                          max_facts=lim.max_facts_per_write)
        subject = reqs[0].subject
        if via not in ("api", "tool"):
            raise RoseMemoryError(f"via must be 'api' or 'tool', got {via!r}")
        if via == "tool" and is_protected(subject, self.config.guard.protected_subjects):
            raise RoseMemoryError(f"{subject!r} is a protected subject (guard.protected_subjects); an agent cannot write it")
        with self._exclusive(namespace):
            check_special_tokens(self.lm.tokenizer, reqs)
            faults.point("write:start")
            live_rows = self.ledger.rows(status="applied", subject=subject, namespace=namespace)
            held = {f["prompt"]: (f["object"], r["id"]) for r in live_rows for f in r["facts"]}
            if all(held.get(r.prompt, (None,))[0] == r.target for r in reqs):
                eid = max(held[r.prompt][1] for r in reqs)
                return WriteRecord(edit_id=eid, status="applied", subject=subject, namespace=namespace,
                                   facts=self.ledger.get(eid)["facts"], reason=f"already remembered by edit {eid}")
            check_rate(self.ledger, namespace, self.config.limits.max_writes_per_minute)
            old, carried = self._carry(live_rows, reqs)
            reqs = reqs + stored_requests(subject, carried)
            record = self._replace(subject, namespace, reqs, old, carried=carried)
            write = WriteRecord(edit_id=record["id"], status=record["status"], subject=subject, namespace=namespace,
                                facts=_facts_of(reqs), recall=record["recall"], reason=record["reason"],
                                superseded=[r["id"] for r in old] if record["status"] == "applied" else [])
            if write.status == "applied":
                write.consolidated_into = consolidation.after_write(self, write)
                self._use(namespace)  # a sleep of another namespace may have switched the weights
            return write

    def _carry(self, rows: list[dict], reqs: list[EditRequest]) -> tuple[list[dict], list[dict]]:
        """The live rows of a subject an edit of `reqs` supersedes, and the facts it carries over (`holding.carry`)."""
        return holding.carry(rows, {r.prompt for r in reqs}, self.config.joint_subject, self.config.limits.max_facts_per_write)

    def _replace(self, subject: str, namespace: str, reqs: list[EditRequest], old: list[dict], origin: str = "write",
                 carried: list[dict] = (), forgetting: list[int] = ()) -> dict:
        """One new edit of `reqs` superseding the live edits `old`: pending row, edit, verify, commit or roll back.

        `carried`: the facts among `reqs` that the edit carries over from `old` (`_carry`), recorded in
        its metrics, so that forgetting a write forgets what that write told and no more.
        `forgetting`: live edits a forget takes out, committed in the edit's own transaction (the
        rewrite of the facts they also held); they are forgotten even when the edit is rejected.
        The active namespace is `namespace`. The faults.point names are where the crash tests kill
        the process (tests/test_crash.py).
        """
        eid = self.ledger.add(subject, _facts_of(reqs), self.config.method, namespace, origin=origin)
        faults.point("write:pending")
        say = lambda text: stage(f"edit {eid}: {text}", self.progress)  # noqa: E731
        old_ids = {r["id"] for r in old} | set(forgetting)
        others = {i: d for i, d in self.live.items() if i not in old_ids}
        gone = [(i, "forgotten", {}) for i in forgetting]
        fields: dict = {}
        try:
            self._compose(others)  # the edit is computed on the weights without what it replaces
            guard = self.config.guard.enabled
            if guard:
                say(f"write guard: {len(self.config.guard.canaries)} canary prompts before the write")
            before = self._canary_answers(tuple(others)) if guard else None
            faults.point("write:editing")
            say(f"computing the {self.config.method} edit of {len(reqs)} fact(s) about {subject}"
                + (f" ({len(carried)} held on edits it replaces)" if carried else ""))
            delta = self._edit(reqs, others)
            faults.point("write:edited")
            fields["delta_file"], fields["delta_sha256"] = self.store.save(eid, delta)
            faults.point("write:saved")
            self._compose(others | {eid: delta})
            faults.point("write:composed")
            say(f"verifying: {2 * len(reqs) + 1} questions to the edited model")
            recall = self._measure(subject, reqs)
            fields["metrics"] = {"recall": recall} | ({"carried": list(carried)} if carried else {})
            reason = passes(self.config.verify, recall)
            if reason is None and guard:
                say("write guard: the canary prompts after the write")
                after = self._canary_answers(tuple(others | {eid: delta}))
                reason, fields["metrics"]["guard"] = check_canaries(self.lm, self.config.guard, before, after)
            if reason is not None:
                raise _Rejected(reason)
            faults.point("write:checked")
            self.ledger.transition([(eid, "applied", fields)] + [(r["id"], "superseded", {"superseded_by": eid}) for r in old]
                                   + gone)
            faults.point("write:committed")
            self.live = others | {eid: delta}
            return {"id": eid, "status": "applied", "recall": recall, "reason": None}
        except BaseException as err:
            self._compose(self.live)  # back to exactly what the ledger says is applied
            reason = str(err) if isinstance(err, (_Rejected, RoseMemoryError)) else f"{type(err).__name__}: {err}"
            rejected = isinstance(err, _Rejected)
            self.ledger.transition([(eid, "failed", fields | {"reason": reason})] + (gone if rejected else []))
            if rejected and gone:  # a forget stands even when the rewrite of the other facts falls short
                self.live = {i: d for i, d in self.live.items() if i not in forgetting}
                self._compose(self.live)
            if not rejected:
                raise
            return {"id": eid, "status": "failed", "recall": fields["metrics"]["recall"], "reason": reason}

    def forget(self, edit_id: int | None = None, *, subject: str | None = None, namespace: str = "default") -> list[int]:
        """Forget what one write told (or every live edit about `subject`) in `namespace`; returns the ids forgotten.

        A write's facts are held by the subject's live edits: its own edit, or the later edit that
        carried them over (a write about a subject carries the facts it already holds, `joint_subject`),
        or the subject's sleep delta. Every live edit holding one of them is reverted exactly (a sleep
        delta with the wake edits it consolidated or was trained on), and the other facts those
        edits held are written again as one new wake edit (origin "rewrite"; a later sleep
        consolidates them again), in the same ledger transaction as the forget, so that a crash in
        between loses neither. A write whose edit holds only what it told is simply reverted.
        """
        if (edit_id is None) == (subject is None):
            raise RoseMemoryError("give either an edit id or subject=..., not both")
        namespace = check_namespace(namespace)
        if edit_id is not None and (isinstance(edit_id, bool) or not isinstance(edit_id, int)):
            raise RoseMemoryError(f"edit id must be an integer, got {edit_id!r}")
        if subject is not None and not isinstance(subject, str):
            raise RoseMemoryError(f"subject must be a string, got {type(subject).__name__}")
        with self._exclusive(namespace):
            faults.point("forget:start")
            rewrite: list[dict] = []
            if edit_id is not None:
                row = self.ledger.get(edit_id)
                if row["namespace"] != namespace:
                    raise RoseMemoryError(f"edit {edit_id} is in namespace {row['namespace']!r}, not {namespace!r}; "
                                          "forget it from its own namespace")
                ids, told = self._holders(row)
            else:
                ids = [r["id"] for r in self.ledger.rows(status="applied", subject=subject.strip(), namespace=namespace)]
                if not ids:
                    raise RoseMemoryError(f"no applied edits about {subject!r} in namespace {namespace!r}; "
                                          "see `rose-memory ledger list`")
            # the wake edits a forgotten sleep delta carried are forgotten with it
            merged = self.ledger.rows(status="consolidated", namespace=namespace)
            while more := [r["id"] for r in merged if r["consolidated_into"] in ids and r["id"] not in ids]:
                ids += more
            if edit_id is not None:
                # the other facts the forgotten edits held are written again, unless an edit that stays holds them
                rows = self.ledger.rows(subject=row["subject"], namespace=namespace)
                rewrite = holding.rewritten(rows, ids, told)
            if rewrite:  # the forget commits with the rewrite's edit: a crash in between loses neither
                again = stored_requests(row["subject"], rewrite)
                staying = [r for r in rows if r["status"] == "applied" and r["id"] not in ids]
                old, carried = self._carry(staying, again)
                self._replace(row["subject"], namespace, again + stored_requests(row["subject"], carried), old,
                              origin="rewrite", carried=carried, forgetting=ids)
                return ids
            keep = {i: d for i, d in self.live.items() if i not in ids}
            self._compose(keep)
            faults.point("forget:composed")
            try:
                self.ledger.transition([(i, "forgotten", {}) for i in ids])
            except BaseException:
                self._compose(self.live)
                raise
            faults.point("forget:committed")
            self.live = keep
            return ids

    def _holders(self, row: dict) -> tuple[list[int], dict[str, str]]:
        """The ids to forget so that what `row`'s write told leaves the weights, and what it told
        ({prompt: object}): the live rows holding it (`holding.holders`), the sleep delta trained on
        top of such a wake edit, and `row` itself (a superseded or consolidated row records so)."""
        if row["status"] not in holding.HELD:
            raise RoseMemoryError(f"edit {row['id']} is {row['status']}; only applied edits can be forgotten")
        live = self.ledger.rows(status="applied", subject=row["subject"], namespace=row["namespace"])
        held = holding.holders(row, live)
        if not held:
            raise RoseMemoryError(f"edit {row['id']} is {row['status']} and no live edit holds what it told any more "
                                  f"(a later write replaced it); see `rose-memory ledger show {row['id']}`")
        ids = [r["id"] for r in held]
        for r in held:
            over = self._sleep_over(r) if r["origin"] != "sleep" else None
            if over is not None and over["id"] not in ids:
                ids.append(over["id"])
        if row["id"] not in ids:
            ids.append(row["id"])
        return ids, holding.told(row)

    def _sleep_over(self, row: dict) -> dict | None:
        """The applied sleep delta of `row`'s subject that was trained with `row` (a wake edit kept
        beside it) applied: the student learned to read that edit, so it goes when the edit goes."""
        prompts = {f["prompt"] for f in row["facts"]}
        for r in self.ledger.rows(status="applied", subject=row["subject"], namespace=row["namespace"]):
            if r["origin"] == "sleep" and r["id"] > row["id"] and prompts & {f["prompt"] for f in r["facts"]}:
                return r
        return None

    # -- consolidation (rose_memory/consolidation.py runs the sleep stage) ------------------------

    def consolidate(self, subject: str | None = None, namespace: str = "default", *,
                    again: bool = False) -> list[ConsolidationRecord]:
        """Sleep: distil a subject's live wake edits in `namespace` into its sleep delta.

        With no `subject`: each subject with a wake edit written since its last sleep (what an idle
        agent or the end of a conversation should call: a subject slept on, kept or refused, with
        nothing new would take the same minutes for the same outcome); `again=True`: every subject
        with a live wake edit (e.g. after changing the sleep settings). A named `subject` always sleeps."""
        with self._exclusive(check_namespace(namespace)):
            stage(f"sleep in namespace {namespace!r}" + (f", subject {subject!r}" if subject else "")
                  + " (minutes per subject on a CPU)", self.progress)
            return consolidation.consolidate(self, subject, namespace, new_only=subject is None and not again)

    # -- reading --------------------------------------------------------------------------------

    def ask(self, question: str, max_new_tokens: int = 48, history: list | None = None,
            namespace: str = "default") -> str:
        """The model's greedy answer to `question` through its chat template, with `namespace`'s weights."""
        if not isinstance(question, str) or not question.strip():
            raise RoseMemoryError("question is empty; ask something, e.g. 'Where does Aurelio live?'")
        if any("\ud800" <= ch <= "\udfff" for ch in question):
            raise RoseMemoryError("question holds an unpaired surrogate (not valid Unicode text); remove it")
        limit = self.config.limits.max_question_chars
        if len(question) > limit:
            raise RoseMemoryError(f"question has {len(question)} characters; at most {limit} are accepted "
                                  "(limits.max_question_chars)")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or not 1 <= max_new_tokens <= 4096:
            raise RoseMemoryError(f"max_new_tokens must be an integer from 1 to 4096, got {max_new_tokens!r}")
        with self._exclusive(check_namespace(namespace)):
            return decode(self.lm, greedy(self.lm, [(chat_text(self.lm, question.strip(), history), True)], max_new_tokens)[0])

    def edits(self, status: str | None = None, namespace: str | None = None) -> list[dict]:
        """Ledger rows, oldest first (every namespace's unless one is given)."""
        return self.ledger.rows(status=status, namespace=None if namespace is None else check_namespace(namespace))

    def verify(self) -> list[str]:
        """Problems in the ledger, its delta files, or between the ledger and the live weights."""
        with self._exclusive():
            problems = self.ledger.verify(self.store.root)
            applied: dict[str, list[int]] = {}
            for r in self.ledger.rows(status="applied"):
                applied.setdefault(r["namespace"], []).append(r["id"])
            held = {ns: list(d) for ns, d in self._sets.items() if d}
            if applied != held:
                problems.append(f"live edits {held} differ from the ledger's applied edits {applied}")
            return problems

    # -- export ---------------------------------------------------------------------------------

    def export_lora(self, directory: str | os.PathLike, max_rank: int | None = None, namespace: str = "default") -> dict:
        """Write `namespace`'s live deltas as a peft LoRA adapter; returns the rank and any truncation error."""
        with self._exclusive(check_namespace(namespace)):
            if not self.live:
                raise RoseMemoryError(f"no applied edits to export in namespace {namespace!r}; write something first")
            stage(f"writing {len(self.live)} edit(s) as a LoRA adapter to {directory}", self.progress)
            return save_lora_adapter(list(self.live.values()), directory, base_model=self.config.model,
                                     max_rank=max_rank or self.config.lora_max_rank,
                                     fan_in_fan_out=spec_for(self.lm.model).conv1d)

    def export_merged(self, directory: str | os.PathLike, namespace: str = "default") -> Path:
        """Write the model edited with `namespace`'s deltas (and its tokenizer) with save_pretrained."""
        with self._exclusive(check_namespace(namespace)):
            out = Path(directory).expanduser()
            out.mkdir(parents=True, exist_ok=True)
            stage(f"saving the model with {len(self.live)} edit(s) to {out}", self.progress)
            with plain_float(self.lm.model):
                self.lm.model.save_pretrained(out)
            self.lm.tokenizer.save_pretrained(out)
            return out

    # -- closing --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.lm is None:
            raise RoseMemoryError("this memory is closed; open a new ParametricMemory")

    def close(self) -> None:
        """Return the model's weights to base and release the home."""
        with self.lock:
            if self.lm is not None and getattr(self.lm.model, "_rose_memory_home", None) == str(self.home):
                try:
                    self._compose({})
                finally:
                    del self.lm.model._rose_memory_home
            self.lm = None
            self._release()

    def _release(self) -> None:
        if getattr(self, "ledger", None) is not None:
            self.ledger.close()
            self.ledger = None
        lock = getattr(self, "_home_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> "ParametricMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        model = self.lm.name if self.lm is not None else None
        return (f"ParametricMemory(home={str(self.home)!r}, model={model!r}, namespace={self.namespace!r}, "
                f"live_edits={len(self.live)})")


class NamespaceHold:
    """`with hold:` holds the memory (its thread lock and the home's lock file) with the weights of
    one namespace in place. Reusable and reentrant, as a lock is; see ParametricMemory.holding."""

    def __init__(self, memory: ParametricMemory, namespace: str):
        self.memory, self.namespace = memory, namespace
        self._stack = threading.local()

    def __enter__(self):
        cm = self.memory._exclusive(self.namespace)
        cm.__enter__()
        self._stack.__dict__.setdefault("items", []).append(cm)
        return self.memory.lm

    def __exit__(self, *exc):
        return self._stack.items.pop().__exit__(*exc)
