"""The memory's settings, stored as config.json in its home, and the record of a write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .consolidation import ConsolidationPolicy
from .editing.api import METHODS
from .errors import RoseMemoryError
from .facts import MAX_FACTS, MAX_SUBJECT_CHARS, MAX_TEXT_CHARS
from .home_lock import DEFAULT_LOCK_TIMEOUT
from .model import EMBEDDED, LoadedModel
from .sleep import SleepConfig
from .stores.ledger import Ledger


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
    # A write about a subject carries the facts its other live edits hold into its own edit and
    # supersedes them (`holding.carry`), so a subject has one live wake edit: one fact per write
    # otherwise moves the subject's value away from the facts before it (first 3 dev subjects,
    # sequential mode, rose: 3 of 12 facts recalled in their own wording at d7c71f9), and every
    # edit left live costs locality. False: only a write that replaces a relation supersedes.
    joint_subject: bool = True
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


def _updated(current: BaseModel, given: BaseModel | dict) -> BaseModel:
    if isinstance(given, dict):
        return type(current).model_validate(current.model_dump() | given)
    return type(current).model_validate(given.model_dump())


def load_config(home: Path, model, method, edit_config, verify, policy, sleep, more: dict) -> MemoryConfig:
    """The home's config.json updated with the settings given to ParametricMemory, written back.

    `more` holds "limits", "guard", "lock_timeout" and "joint_subject" (None: keep the stored value).
    """
    path = home / "config.json"
    try:
        cfg = MemoryConfig.model_validate_json(path.read_text()) if path.exists() else MemoryConfig()
    except ValidationError as err:
        raise RoseMemoryError(f"{path} is not a valid memory config ({err.error_count()} errors); fix or remove it") from None
    fresh = not path.exists()
    name = model.name if isinstance(model, LoadedModel) else model
    if name is not None and name != cfg.model:
        if not fresh and has_edits(home):
            raise RoseMemoryError(
                f"the memory at {home} holds edits of model {cfg.model!r}, not {name!r}; "
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
        for key in ("lock_timeout", "joint_subject"):
            if more[key] is not None:
                cfg = MemoryConfig.model_validate(cfg.model_dump() | {key: more[key]})
    except ValidationError as err:
        raise RoseMemoryError(f"invalid memory settings: {err}") from None
    tmp = path.with_name("config.json.tmp")
    tmp.write_text(cfg.model_dump_json(indent=2))
    os.replace(tmp, path)
    return cfg


def has_edits(home: Path) -> bool:
    path = home / "ledger.sqlite"
    if not path.exists():
        return False
    ledger = Ledger(path)
    try:
        return bool(ledger.rows())
    finally:
        ledger.close()
