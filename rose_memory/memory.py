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

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .editing.api import METHODS, edit
from .editing.delta import Delta
from .editing.targets import TargetCache
from .errors import RoseMemoryError
from .arch import spec_for
from . import consolidation, faults
from .consolidation import ConsolidationPolicy, ConsolidationRecord
from .sleep import SleepConfig
from .facts import MAX_FACTS, MAX_SUBJECT_CHARS, MAX_TEXT_CHARS, EditRequest, check_namespace, make_facts, stored_requests
from .generate import generate_ids
from .model import EMBEDDED, LoadedModel, load_cached, resolve_device, resolve_dtype
from .stores.deltas import DeltaStore, delta_name, save_lora_adapter
from .stores.ledger import Ledger, resolve_key
from .text import mentions

DEFAULT_LOCK_TIMEOUT = 60.0


def default_home() -> Path:
    return Path(os.environ.get("ROSE_MEMORY_HOME", "~/.rose-memory")).expanduser()


def check_home(home: Path) -> Path:
    """Refuse a home that cannot be a folder (a file, or under one) before anything is created."""
    for p in (home, *home.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == home else f"is under {p}, which is a file"
                raise RoseMemoryError(f"the memory home {home} {what}, not a folder; pass --home with a folder")
            break
    return home


class VerifyConfig(BaseModel):
    """How a write is checked: generations for the edit's own wording and for chat questions."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a silent default

    raw_tokens: int = 12          # continuation of "Aurelio lives in the city of"
    chat_tokens: int = 40         # answer to a chat question
    chat_question: str = 'Finish the sentence "{text} ..."'
    about_question: str = "What can you tell me about {subject}?"
    min_edit_recall: float = 0.5  # below: the write is reverted and marked failed
    min_chat_recall: float = 0.0  # the small default model often answers chat questions loosely


class Limits(BaseModel):
    """What one write may hold, and how often a namespace may write (checked before anything is written)."""

    model_config = ConfigDict(extra="forbid")

    max_subject_chars: int = Field(MAX_SUBJECT_CHARS, ge=1, le=MAX_SUBJECT_CHARS)
    max_text_chars: int = Field(MAX_TEXT_CHARS, ge=1, le=MAX_TEXT_CHARS)   # a relation or an object
    max_facts_per_write: int = Field(MAX_FACTS, ge=1, le=MAX_FACTS)
    max_question_chars: int = Field(2000, ge=1)                          # ask()
    # Writes (ledger rows of origin "write", failed ones included) per namespace in the last 60 s,
    # counted in the ledger so that every process writing to the home shares the budget. None: no limit.
    max_writes_per_minute: int | None = Field(60, ge=1)


# Prompts unrelated to anything a user tells an agent; their greedy continuations before and after
# a write show whether the write disturbed the model beyond its subject.
CANARIES = (
    "The capital of France is",
    "Water freezes at a temperature of",
    "The largest planet in the solar system is",
    "Romeo and Juliet was written by",
    "The chemical symbol for gold is",
    "A week has seven",
    "The Great Wall is located in",
    "The opposite of hot is",
)


class GuardConfig(BaseModel):
    """The write guard: a write that changes too many canary answers is reverted and recorded failed."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    canaries: list[str] = Field(default_factory=lambda: list(CANARIES))
    tokens: int = Field(6, ge=1)                     # greedy tokens compared per canary
    max_changed: float = Field(0.5, ge=0.0, le=1.0)  # share of canary answers a write may change
    # Subjects a tool call (an agent) may not write; compared case- and space-insensitively.
    # The Python API and the CLI may still write them.
    protected_subjects: list[str] = Field(default_factory=list)


class MemoryConfig(BaseModel):
    """Stored as config.json in the home; the model id fixes which base the deltas belong to."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a silent default

    model: str = EMBEDDED
    method: str = "rose"
    edit: dict[str, Any] = Field(default_factory=dict)  # EditConfig overrides
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    policy: ConsolidationPolicy = Field(default_factory=ConsolidationPolicy)
    sleep: dict[str, Any] = Field(default_factory=dict)  # SleepConfig overrides (rose_memory.sleep.config)
    lora_max_rank: int = 64
    limits: Limits = Field(default_factory=Limits)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    # Seconds an operation waits for another process that holds the home before it gives up.
    lock_timeout: float = Field(DEFAULT_LOCK_TIMEOUT, ge=0.0)
    # A file holding the ledger's HMAC key (else $ROSE_MEMORY_LEDGER_KEY; neither: a plain hash chain).
    ledger_key_file: str | None = None


class WriteRecord(BaseModel):
    edit_id: int
    status: str
    subject: str
    namespace: str = "default"
    facts: list[dict]
    recall: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None
    superseded: list[int] = Field(default_factory=list)
    consolidated_into: int | None = None


class _Rejected(Exception):
    """A write whose verification fell below the configured recall."""


def _updated(current: BaseModel, given: BaseModel | dict) -> BaseModel:
    if isinstance(given, dict):
        return type(current).model_validate(current.model_dump() | given)
    return type(current).model_validate(given.model_dump())


def _facts_of(reqs: list[EditRequest]) -> list[dict]:
    return [{"prompt": r.prompt, "object": r.target} for r in reqs]


@contextmanager
def _plain_float(model):
    """A GGUF model is held dequantized in memory: let save_pretrained write it as the float model it is."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if str(getattr(method, "value", method)) != "gguf":
        yield
        return
    qc = model.config.quantization_config
    model.hf_quantizer = None
    del model.config.quantization_config
    try:
        yield
    finally:
        model.hf_quantizer, model.config.quantization_config = quantizer, qc


class ParametricMemory:
    """A memory whose contents are edits in the weights of `lm`, recorded in `home`.

    `model` is None (the home's model, else the embedded default), a model name or path, or a
    LoadedModel. While the memory is open it owns that model's weights; `close()` returns
    them to the base model. `device` and `dtype` (as `load_model` takes them: auto is CUDA with
    bf16 weights where present, else the CPU in float32) apply when the memory loads the model
    itself; a LoadedModel is used as it is. `limits`, `guard` and `lock_timeout` update the
    home's stored settings, as `verify` and `policy` do.
    """

    def __init__(self, home: str | os.PathLike | None = None, model: str | LoadedModel | None = None,
                 method: str | None = None, *, edit_config: dict | None = None,
                 verify: VerifyConfig | dict | None = None, policy: ConsolidationPolicy | dict | None = None,
                 sleep: dict | None = None, limits: Limits | dict | None = None, guard: GuardConfig | dict | None = None,
                 lock_timeout: float | None = None, progress: bool = False, device: str = "auto", dtype: str = "auto"):
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
        self._sources: dict[str, tuple] = {}          # which deltas (id, scale) each matrix holds now
        self._sets: dict[str, dict[int, Delta]] = {}  # applied deltas per namespace, ledger order
        self._synced: int | None = None               # the ledger state (Ledger.state) the sets were read at
        self._canaries: dict[tuple, list[list[int]]] = {}
        self._held = 0                                # nesting depth of the home lock in this process
        self._timeout = lock_timeout if lock_timeout is not None else self._stored_lock_timeout()
        self._home_lock = FileLock(str(self.home / ".lock"), thread_local=False)
        self._home_gate = FileLock(str(self.home / ".lock.gate"), thread_local=False)
        try:
            with self.lock, self._holding_home():
                self.config = self._load_config(model, method, edit_config, verify, policy, sleep,
                                                {"limits": limits, "guard": guard, "lock_timeout": lock_timeout})
                self._timeout = self.config.lock_timeout
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

    def _stored_lock_timeout(self) -> float:
        """The home's lock_timeout, read before the lock is held (config.json is replaced atomically)."""
        try:
            value = json.loads((self.home / "config.json").read_text()).get("lock_timeout", DEFAULT_LOCK_TIMEOUT)
            return float(value)
        except (OSError, ValueError, TypeError, AttributeError):
            return DEFAULT_LOCK_TIMEOUT

    def _take_home_lock(self, timeout: float) -> None:
        """The lock file, through a gate: whoever waits for the lock holds the gate, so the holder's next
        operation queues behind it instead of taking the lock again at once (without the gate a process
        writing in a loop starves the other: filelock polls, and the releaser is always first)."""
        start = time.monotonic()
        self._home_gate.acquire(timeout=timeout, poll_interval=0.01)
        try:
            self._home_lock.acquire(timeout=max(0.0, timeout - (time.monotonic() - start)), poll_interval=0.01)
        finally:
            self._home_gate.release()

    @contextmanager
    def _holding_home(self):
        """The home's lock file, held by this process (reentrant within it); waits for another process."""
        if self._held == 0:
            try:
                self._take_home_lock(0)
            except Timeout:
                print(f"rose-memory: the memory at {self.home} is in use by another process; "
                      f"waiting up to {self._timeout:g} s", file=sys.stderr, flush=True)
                try:
                    self._take_home_lock(self._timeout)
                except Timeout:
                    raise RoseMemoryError(
                        f"the memory at {self.home} stayed in use by another process for {self._timeout:g} s; "
                        "try again when it is done, or raise lock_timeout in the home's config.json"
                    ) from None
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if self._held == 0:
                self._home_lock.release()

    @contextmanager
    def _exclusive(self, namespace: str | None = None):
        """Hold the memory (threads and processes), weights in step with the ledger, `namespace` active."""
        with self.lock:
            self._check_open()
            with self._holding_home():
                self._sync()
                if namespace is not None:
                    self._use(namespace)
                yield
                if self._held == 1:  # our own changes are in the sets already: no re-read next time
                    self._synced = self.ledger.state()

    def _load_config(self, model, method, edit_config, verify, policy, sleep, more: dict) -> MemoryConfig:
        path = self.home / "config.json"
        try:
            cfg = MemoryConfig.model_validate_json(path.read_text()) if path.exists() else MemoryConfig()
        except ValidationError as err:
            raise RoseMemoryError(f"{path} is not a valid memory config ({err.error_count()} errors); fix or remove it") from None
        fresh = not path.exists()
        name = model.name if isinstance(model, LoadedModel) else model
        if name is not None and name != cfg.model:
            if not fresh and self._has_edits():
                raise RoseMemoryError(
                    f"the memory at {self.home} holds edits of model {cfg.model!r}, not {name!r}; "
                    "open it with that model, or use another home"
                )
            cfg.model = name
        if method is not None:
            if method not in METHODS:
                raise RoseMemoryError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
            cfg.method = method
        try:  # a dict updates the stored settings; a config object replaces them
            if edit_config is not None:
                cfg.edit = cfg.edit | dict(edit_config)
            if verify is not None:
                cfg.verify = _updated(cfg.verify, verify)
            if policy is not None:
                cfg.policy = _updated(cfg.policy, policy)
            if sleep is not None:
                cfg.sleep = SleepConfig.model_validate(cfg.sleep | dict(sleep)).model_dump(exclude_defaults=True)
            for key in ("limits", "guard"):
                if more[key] is not None:
                    setattr(cfg, key, _updated(getattr(cfg, key), more[key]))
            if more["lock_timeout"] is not None:
                cfg = MemoryConfig.model_validate(cfg.model_dump() | {"lock_timeout": more["lock_timeout"]})
        except ValidationError as err:
            raise RoseMemoryError(f"invalid memory settings: {err}") from None
        tmp = path.with_name("config.json.tmp")
        tmp.write_text(cfg.model_dump_json(indent=2))
        os.replace(tmp, path)
        return cfg

    def _has_edits(self) -> bool:
        path = self.home / "ledger.sqlite"
        if not path.exists():
            return False
        ledger = Ledger(path)
        try:
            return bool(ledger.rows())
        finally:
            ledger.close()

    def _load_model(self, model) -> LoadedModel:
        lm = model if isinstance(model, LoadedModel) else load_cached(self.config.model, self._device, self._dtype)
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
                key = tuple((i, scales.get(i, 1.0)) for i in ids)
                if self._sources.get(name, ()) == key:
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

    # -- generation and verification ------------------------------------------------------------

    def _chat(self, question: str, history: list | None = None) -> str:
        tok = self.lm.tokenizer
        messages = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in (history or [])]
        messages.append({"role": "user", "content": question})
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages[:-1])
        return f"{turns}Question: {question}\nAnswer:"

    def _generate(self, prompts: list[tuple[str, bool]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation tokens of a batch of (text, is_chat) prompts (end of sequence cut)."""
        tok = self.lm.tokenizer
        ids = [tok(t, add_special_tokens=not chat)["input_ids"] for t, chat in prompts]
        return generate_ids(self.lm, ids, max_new_tokens=max_new_tokens)

    def _decode(self, ids: list[int]) -> str:
        return self.lm.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _measure(self, subject: str, reqs: list[EditRequest]) -> dict:
        """Recall of each fact in its edit form and in chat, and in a general question about the subject."""
        vc = self.config.verify
        prompts = [(r.text, False) for r in reqs]
        prompts += [(self._chat(vc.chat_question.format(text=r.text, subject=subject)), True) for r in reqs]
        prompts.append((self._chat(vc.about_question.format(subject=subject)), True))
        outs = self._generate(prompts, max(vc.raw_tokens, vc.chat_tokens))
        raw = [self._decode(o[: vc.raw_tokens]) for o in outs[: len(reqs)]]
        chat, about = [self._decode(o) for o in outs[len(reqs): 2 * len(reqs)]], self._decode(outs[-1])
        hits = lambda texts: [mentions(t, r.target) for t, r in zip(texts, reqs)]  # noqa: E731
        e, c = hits(raw), hits(chat)
        a = [mentions(about, r.target) for r in reqs]
        return {
            "edit": sum(e) / len(reqs), "chat": sum(c) / len(reqs), "about": sum(a) / len(reqs),
            "answers": [{"fact": f"{r.text} {r.target}", "edit": x, "chat": y} for r, x, y in zip(reqs, raw, chat)],
            "about_answer": about,
        }

    def _passes(self, recall: dict) -> str | None:
        vc = self.config.verify
        if recall["edit"] < vc.min_edit_recall:
            return f"recall in the edit's own wording {recall['edit']:.2f} < {vc.min_edit_recall}"
        if recall["chat"] < vc.min_chat_recall:
            return f"recall in chat {recall['chat']:.2f} < {vc.min_chat_recall}"
        return None

    # -- the write guard ------------------------------------------------------------------------

    def _canary_answers(self, key: tuple) -> list[list[int]]:
        """Greedy answers to the canary prompts on the weights as they are now (`key`: which deltas those are)."""
        g = self.config.guard
        if key not in self._canaries:
            if len(self._canaries) > 32:
                self._canaries.clear()
            self._canaries[key] = self._generate([(p, False) for p in g.canaries], g.tokens)
        return self._canaries[key]

    def _guard(self, before: list[list[int]], key: tuple) -> tuple[str | None, dict]:
        """(reason to refuse or None, the measurement) for the weights as they are now against `before`."""
        g = self.config.guard
        after = self._canary_answers(key)
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        share = len(changed) / max(1, len(before))
        report = {"canaries": len(before), "changed": len(changed), "share": round(share, 4),
                  "examples": [{"prompt": g.canaries[i], "before": self._decode(before[i]), "after": self._decode(after[i])}
                               for i in changed[:3]]}
        if share > g.max_changed:
            return (f"write guard: the edit changed {len(changed)} of {len(before)} answers to unrelated prompts "
                    f"(more than guard.max_changed = {g.max_changed:.0%}), e.g. {g.canaries[changed[0]]!r}: "
                    f"{report['examples'][0]['before']!r} -> {report['examples'][0]['after']!r}"), report
        return None, report

    def _protected(self, subject: str) -> bool:
        norm = lambda s: " ".join(s.casefold().split())  # noqa: E731
        return norm(subject) in {norm(p) for p in self.config.guard.protected_subjects}

    def _check_special_tokens(self, reqs: list[EditRequest]) -> None:
        """Refuse text holding the tokenizer's control tokens ("<|im_start|>", "</s>"): the tokenizer would
        read them as the chat template's structure, not as words."""
        specials = [t for t in getattr(self.lm.tokenizer, "all_special_tokens", []) if isinstance(t, str) and len(t) > 1]
        for r in reqs:
            for what, text in (("subject", r.subject), ("relation", r.prompt), ("object", r.target)):
                found = next((t for t in specials if t in text), None)
                if found is not None:
                    raise RoseMemoryError(f"{what} {text[:80]!r} holds the model's control token {found!r}; remove it")

    def _check_rate(self, namespace: str) -> None:
        limit = self.config.limits.max_writes_per_minute
        if limit is None:
            return
        since = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat(timespec="microseconds")
        n = self.ledger.count(namespace=namespace, origin="write", since=since)
        if n >= limit:
            raise RoseMemoryError(f"namespace {namespace!r} wrote {n} times in the last minute; at most {limit} "
                                  "are accepted (limits.max_writes_per_minute); wait and try again")

    # -- writing --------------------------------------------------------------------------------

    def write(self, subject: str, facts: list, namespace: str = "default", *, via: str = "api") -> WriteRecord:
        """Write facts about one subject as one same-subject edit into `namespace`; see the module docstring.

        Facts are (relation, object) pairs, Fact objects or {"relation", "object"} dicts.
        A fact whose relation the subject already holds replaces it (the old edit is superseded;
        its other facts are carried into the new edit). `via="tool"` marks a write an agent asked
        for: the guard's protected subjects refuse it.
        """
        namespace = check_namespace(namespace)
        lim = self.config.limits
        reqs = make_facts(subject, facts, max_subject_chars=lim.max_subject_chars, max_text_chars=lim.max_text_chars,
                          max_facts=lim.max_facts_per_write)
        subject = reqs[0].subject
        if via not in ("api", "tool"):
            raise RoseMemoryError(f"via must be 'api' or 'tool', got {via!r}")
        if via == "tool" and self._protected(subject):
            raise RoseMemoryError(f"{subject!r} is a protected subject (guard.protected_subjects); an agent cannot write it")
        with self._exclusive(namespace):
            self._check_special_tokens(reqs)
            faults.point("write:start")
            live_rows = self.ledger.rows(status="applied", subject=subject, namespace=namespace)
            held = {f["prompt"]: (f["object"], r["id"]) for r in live_rows for f in r["facts"]}
            if all(held.get(r.prompt, (None,))[0] == r.target for r in reqs):
                eid = max(held[r.prompt][1] for r in reqs)
                return WriteRecord(edit_id=eid, status="applied", subject=subject, namespace=namespace,
                                   facts=self.ledger.get(eid)["facts"], reason=f"already remembered by edit {eid}")
            self._check_rate(namespace)
            prompts = {r.prompt for r in reqs}
            old = [r for r in live_rows if any(f["prompt"] in prompts for f in r["facts"])]
            carried = [f for r in old for f in r["facts"] if f["prompt"] not in prompts]
            reqs = reqs + stored_requests(subject, carried)
            record = self._replace(subject, namespace, reqs, old)
            write = WriteRecord(edit_id=record["id"], status=record["status"], subject=subject, namespace=namespace,
                                facts=_facts_of(reqs), recall=record["recall"], reason=record["reason"],
                                superseded=[r["id"] for r in old] if record["status"] == "applied" else [])
            if write.status == "applied":
                write.consolidated_into = consolidation.after_write(self, write)
                self._use(namespace)  # a sleep of another namespace may have switched the weights
            return write

    def _replace(self, subject: str, namespace: str, reqs: list[EditRequest], old: list[dict], origin: str = "write") -> dict:
        """One new edit of `reqs` superseding the live edits `old`: pending row, edit, verify, commit or roll back.

        The active namespace is `namespace`. The faults.point names are where the crash tests kill
        the process (tests/test_crash.py).
        """
        eid = self.ledger.add(subject, _facts_of(reqs), self.config.method, namespace, origin=origin)
        faults.point("write:pending")
        old_ids = {r["id"] for r in old}
        others = {i: d for i, d in self.live.items() if i not in old_ids}
        fields: dict = {}
        try:
            self._compose(others)  # the edit is computed on the weights without what it replaces
            guard = self.config.guard.enabled
            before = self._canary_answers(tuple(others)) if guard else None
            faults.point("write:editing")
            delta = self._edit(reqs, others)
            faults.point("write:edited")
            fields["delta_file"], fields["delta_sha256"] = self.store.save(eid, delta)
            faults.point("write:saved")
            self._compose(others | {eid: delta})
            faults.point("write:composed")
            recall = self._measure(subject, reqs)
            fields["metrics"] = {"recall": recall}
            reason = self._passes(recall)
            if reason is None and guard:
                reason, fields["metrics"]["guard"] = self._guard(before, tuple(others | {eid: delta}))
            if reason is not None:
                raise _Rejected(reason)
            faults.point("write:checked")
            self.ledger.transition([(eid, "applied", fields)] + [(r["id"], "superseded", {"superseded_by": eid}) for r in old])
            faults.point("write:committed")
            self.live = others | {eid: delta}
            return {"id": eid, "status": "applied", "recall": recall, "reason": None}
        except BaseException as err:
            self._compose(self.live)  # back to exactly what the ledger says is applied
            reason = str(err) if isinstance(err, (_Rejected, RoseMemoryError)) else f"{type(err).__name__}: {err}"
            self.ledger.transition([(eid, "failed", fields | {"reason": reason})])
            if not isinstance(err, _Rejected):
                raise
            return {"id": eid, "status": "failed", "recall": fields["metrics"]["recall"], "reason": reason}

    def forget(self, edit_id: int | None = None, *, subject: str | None = None, namespace: str = "default") -> list[int]:
        """Revert an applied edit of `namespace` exactly (or every live edit about `subject` there); returns the ids forgotten.

        Facts consolidated by a sleep are in the subject's sleep delta: forgetting a consolidated
        edit forgets that sleep delta too, and the subject's other facts it carried are written
        again as a new wake edit (origin "rewrite"; a later sleep consolidates them again).
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
                carrier = row
                while carrier["status"] == "consolidated":  # an earlier sleep delta is carried by the newest one
                    carrier = self.ledger.get(carrier["consolidated_into"])
                carrier = None if carrier is row else carrier
                if carrier is not None and carrier["status"] == "applied":
                    gone = {f["prompt"] for f in row["facts"]}
                    rewrite = [f for f in carrier["facts"] if f["prompt"] not in gone]
                    ids = [carrier["id"], edit_id]
                elif row["status"] != "applied":
                    raise RoseMemoryError(f"edit {edit_id} is {row['status']}; only applied edits can be forgotten")
                else:
                    ids = [edit_id]
            else:
                ids = [r["id"] for r in self.ledger.rows(status="applied", subject=subject.strip(), namespace=namespace)]
                if not ids:
                    raise RoseMemoryError(f"no applied edits about {subject!r} in namespace {namespace!r}; "
                                          "see `rose-memory ledger list`")
            # the wake edits a forgotten sleep delta carried are forgotten with it
            merged = self.ledger.rows(status="consolidated", namespace=namespace)
            while more := [r["id"] for r in merged if r["consolidated_into"] in ids and r["id"] not in ids]:
                ids += more
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
            if rewrite:
                self._replace(row["subject"], row["namespace"], stored_requests(row["subject"], rewrite), [], origin="rewrite")
            return ids

    # -- consolidation (rose_memory/consolidation.py runs the sleep stage) ------------------------

    def consolidate(self, subject: str | None = None, namespace: str = "default") -> list[ConsolidationRecord]:
        """Sleep: distil each subject's live wake edits in `namespace` into its sleep delta (every such subject if none given)."""
        with self._exclusive(check_namespace(namespace)):
            return consolidation.consolidate(self, subject, namespace)

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
            return self._decode(self._generate([(self._chat(question.strip(), history), True)], max_new_tokens)[0])

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
            return save_lora_adapter(list(self.live.values()), directory, base_model=self.config.model,
                                     max_rank=max_rank or self.config.lora_max_rank,
                                     fan_in_fan_out=spec_for(self.lm.model).conv1d)

    def export_merged(self, directory: str | os.PathLike, namespace: str = "default") -> Path:
        """Write the model edited with `namespace`'s deltas (and its tokenizer) with save_pretrained."""
        with self._exclusive(check_namespace(namespace)):
            out = Path(directory).expanduser()
            out.mkdir(parents=True, exist_ok=True)
            with _plain_float(self.lm.model):
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
        if lock is not None and self._held == 0 and lock.is_locked:
            lock.release(force=True)

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
