"""ParametricMemory: facts written into the live model's weights, every edit recorded in a ledger.

The live weights are always a function of the ledger: for each edited matrix,
W = W_base + sum of the applied deltas that touch it (ledger order). The memory keeps a copy
of the base value of every matrix it has edited, so writing, superseding and forgetting all
recompose W from that copy: a forgotten edit leaves the weights bit-for-bit at base, and a
crash can never leave a half-written matrix behind (on open the weights are recomposed).
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .editing.api import METHODS, edit
from .editing.delta import Delta
from .editing.targets import TargetCache
from .errors import RoseMemoryError
from .arch import spec_for
from . import consolidation
from .consolidation import ConsolidationPolicy, ConsolidationRecord
from .sleep import SleepConfig
from .facts import EditRequest, make_facts, stored_requests
from .generate import generate_ids
from .model import EMBEDDED, LoadedModel, load_cached, resolve_device, resolve_dtype
from .stores.deltas import DeltaStore, delta_name, save_lora_adapter
from .stores.ledger import Ledger
from .text import mentions

try:
    import fcntl
except ImportError:  # Windows: no advisory lock, one process per home is up to the user
    fcntl = None


def default_home() -> Path:
    return Path(os.environ.get("ROSE_MEMORY_HOME", "~/.rose-memory")).expanduser()


class VerifyConfig(BaseModel):
    """How a write is checked: generations for the edit's own wording and for chat questions."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a silent default

    raw_tokens: int = 12          # continuation of "Aurelio lives in the city of"
    chat_tokens: int = 40         # answer to a chat question
    chat_question: str = 'Finish the sentence "{text} ..."'
    about_question: str = "What can you tell me about {subject}?"
    min_edit_recall: float = 0.5  # below: the write is reverted and marked failed
    min_chat_recall: float = 0.0  # the small default model often answers chat questions loosely


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
    itself; a LoadedModel is used as it is.
    """

    def __init__(self, home: str | os.PathLike | None = None, model: str | LoadedModel | None = None,
                 method: str | None = None, *, edit_config: dict | None = None,
                 verify: VerifyConfig | dict | None = None, policy: ConsolidationPolicy | dict | None = None,
                 sleep: dict | None = None, progress: bool = False, device: str = "auto", dtype: str = "auto"):
        if not isinstance(model, LoadedModel):   # a bad device or dtype fails before the home is touched
            resolve_dtype(dtype, resolve_device(device))
        self._device, self._dtype = device, dtype
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.progress = progress
        self._lockfile = self._take_home_lock()
        self.lm: LoadedModel | None = None
        self.ledger: Ledger | None = None
        self._base: dict[str, torch.Tensor] = {}      # base value of every matrix we touched
        self._sources: dict[str, tuple] = {}  # which deltas (id, scale) each matrix holds now
        self.live: dict[int, Delta] = {}              # applied edits, ledger order
        try:
            self.config = self._load_config(model, method, edit_config, verify, policy, sleep)
            self.ledger = Ledger(self.home / "ledger.sqlite")
            self.store = DeltaStore(self.home / "deltas")
            self.lm = self._load_model(model)
            self._rebuild()
        except BaseException:
            self.close()
            raise

    # -- opening --------------------------------------------------------------------------------

    def _take_home_lock(self):
        f = open(self.home / ".lock", "a+")
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise RoseMemoryError(
                    f"the memory at {self.home} is open elsewhere (another process or an unclosed "
                    "ParametricMemory); close it first, or use another --home"
                ) from None
        return f

    def _load_config(self, model, method, edit_config, verify, policy, sleep) -> MemoryConfig:
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

    def _rebuild(self) -> None:
        """Recover from a crash, then set the weights to base + the applied deltas."""
        for row in self.ledger.rows(status="pending"):
            (self.store.root / delta_name(row["id"])).unlink(missing_ok=True)
            self.ledger.transition([(row["id"], "failed", {"reason": "interrupted before it was applied"})])
        self.store.clean_tmp()
        live = {r["id"]: self.store.load(r["delta_file"], r["delta_sha256"]) for r in self.ledger.rows(status="applied")}
        self._compose(live)  # all deltas loaded and checked before any weight changes
        self.live = live

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

    # -- writing --------------------------------------------------------------------------------

    def write(self, subject: str, facts: list, namespace: str = "default") -> WriteRecord:
        """Write facts about one subject as one same-subject edit; see the module docstring.

        Facts are (relation, object) pairs, Fact objects or {"relation", "object"} dicts.
        A fact whose relation the subject already holds replaces it (the old edit is superseded;
        its other facts are carried into the new edit).
        """
        reqs = make_facts(subject, facts)
        if not isinstance(namespace, str) or not namespace.strip():
            raise RoseMemoryError("namespace must be a non-empty string")
        subject = reqs[0].subject
        with self.lock:
            self._check_open()
            live_rows = self.ledger.rows(status="applied", subject=subject, namespace=namespace)
            held = {f["prompt"]: (f["object"], r["id"]) for r in live_rows for f in r["facts"]}
            if all(held.get(r.prompt, (None,))[0] == r.target for r in reqs):
                eid = max(held[r.prompt][1] for r in reqs)
                return WriteRecord(edit_id=eid, status="applied", subject=subject, namespace=namespace,
                                   facts=self.ledger.get(eid)["facts"], reason=f"already remembered by edit {eid}")
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
            return write

    def _replace(self, subject: str, namespace: str, reqs: list[EditRequest], old: list[dict], origin: str = "write") -> dict:
        """One new edit of `reqs` superseding the live edits `old`: pending row, edit, verify, commit or roll back."""
        eid = self.ledger.add(subject, _facts_of(reqs), self.config.method, namespace, origin=origin)
        old_ids = {r["id"] for r in old}
        others = {i: d for i, d in self.live.items() if i not in old_ids}
        fields: dict = {}
        try:
            self._compose(others)  # the edit is computed on the weights without what it replaces
            delta = self._edit(reqs, others)
            fields["delta_file"], fields["delta_sha256"] = self.store.save(eid, delta)
            self._compose(others | {eid: delta})
            recall = self._measure(subject, reqs)
            fields["metrics"] = {"recall": recall}
            reason = self._passes(recall)
            if reason is not None:
                raise _Rejected(reason)
            self.ledger.transition([(eid, "applied", fields)] + [(r["id"], "superseded", {"superseded_by": eid}) for r in old])
            self.live = others | {eid: delta}
            return {"id": eid, "status": "applied", "recall": recall, "reason": None}
        except BaseException as err:
            self._compose(self.live)  # back to exactly what the ledger says is applied
            reason = str(err) if isinstance(err, (_Rejected, RoseMemoryError)) else f"{type(err).__name__}: {err}"
            self.ledger.transition([(eid, "failed", fields | {"reason": reason})])
            if not isinstance(err, _Rejected):
                raise
            return {"id": eid, "status": "failed", "recall": fields["metrics"]["recall"], "reason": reason}

    def forget(self, edit_id: int | None = None, *, subject: str | None = None, namespace: str | None = None) -> list[int]:
        """Revert an applied edit exactly (or every live edit about `subject`); returns the ids forgotten.

        Facts consolidated by a sleep are in the subject's sleep delta: forgetting a consolidated
        edit forgets that sleep delta too, and the subject's other facts it carried are written
        again as a new wake edit (origin "rewrite"; a later sleep consolidates them again).
        """
        if (edit_id is None) == (subject is None):
            raise RoseMemoryError("give either an edit id or subject=..., not both")
        with self.lock:
            self._check_open()
            rewrite: list[dict] = []
            if edit_id is not None:
                if isinstance(edit_id, bool) or not isinstance(edit_id, int):
                    raise RoseMemoryError(f"edit id must be an integer, got {edit_id!r}")
                row = self.ledger.get(edit_id)
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
                ids = [r["id"] for r in self.ledger.rows(status="applied", subject=str(subject).strip(), namespace=namespace)]
                if not ids:
                    raise RoseMemoryError(f"no applied edits about {subject!r}; see `rose-memory ledger list`")
            # the wake edits a forgotten sleep delta carried are forgotten with it
            merged = self.ledger.rows(status="consolidated")
            while more := [r["id"] for r in merged if r["consolidated_into"] in ids and r["id"] not in ids]:
                ids += more
            keep = {i: d for i, d in self.live.items() if i not in ids}
            self._compose(keep)
            try:
                self.ledger.transition([(i, "forgotten", {}) for i in ids])
            except BaseException:
                self._compose(self.live)
                raise
            self.live = keep
            if rewrite:
                self._replace(row["subject"], row["namespace"], stored_requests(row["subject"], rewrite), [], origin="rewrite")
            return ids

    # -- consolidation (rose_memory/consolidation.py runs the sleep stage) ------------------------

    def consolidate(self, subject: str | None = None, namespace: str | None = None) -> list[ConsolidationRecord]:
        """Sleep: distil each subject's live wake edits into its sleep delta (every such subject if none given)."""
        with self.lock:
            self._check_open()
            return consolidation.consolidate(self, subject, namespace)

    # -- reading --------------------------------------------------------------------------------

    def ask(self, question: str, max_new_tokens: int = 48, history: list | None = None) -> str:
        """The model's greedy answer to `question` through its chat template."""
        if not isinstance(question, str) or not question.strip():
            raise RoseMemoryError("question is empty; ask something, e.g. 'Where does Aurelio live?'")
        with self.lock:
            self._check_open()
            return self._decode(self._generate([(self._chat(question.strip(), history), True)], max_new_tokens)[0])

    def edits(self, status: str | None = None) -> list[dict]:
        return self.ledger.rows(status=status)

    def verify(self) -> list[str]:
        """Problems in the ledger, its delta files, or between the ledger and the live weights."""
        with self.lock:
            self._check_open()
            problems = self.ledger.verify(self.store.root)
            applied = [r["id"] for r in self.ledger.rows(status="applied")]
            if applied != list(self.live):
                problems.append(f"live edits {list(self.live)} differ from the ledger's applied edits {applied}")
            return problems

    # -- export ---------------------------------------------------------------------------------

    def export_lora(self, directory: str | os.PathLike, max_rank: int | None = None) -> dict:
        """Write the live deltas as a peft LoRA adapter; returns the rank and any truncation error."""
        with self.lock:
            self._check_open()
            if not self.live:
                raise RoseMemoryError("no applied edits to export; write something first")
            return save_lora_adapter(list(self.live.values()), directory, base_model=self.config.model,
                                     max_rank=max_rank or self.config.lora_max_rank,
                                     fan_in_fan_out=spec_for(self.lm.model).conv1d)

    def export_merged(self, directory: str | os.PathLike) -> Path:
        """Write the edited model (and tokenizer) with save_pretrained."""
        with self.lock:
            self._check_open()
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
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def __enter__(self) -> "ParametricMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        model = self.lm.name if self.lm is not None else None
        return f"ParametricMemory(home={str(self.home)!r}, model={model!r}, live_edits={len(self.live)})"
