"""Validated input types: a fact, an edit request, and their checks."""

from __future__ import annotations

import re
import unicodedata

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import RoseMemoryError

MAX_SUBJECT_CHARS = 200   # the defaults of the memory's `limits` (memory.Limits), and the hard ceiling of
MAX_TEXT_CHARS = 500      # an EditRequest made anywhere else
MAX_FACTS = 16
# Characters refused anywhere in a subject, relation or object: control characters (newlines,
# tabs, NUL, escapes), unpaired surrogates (not encodable as UTF-8, so not storable), and the
# bidirectional overrides and isolates that can make the ledger display other text than it holds.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
NAMESPACE_RE = re.compile(r"[\w.@:-]{1,64}")


def _bad_char(text: str) -> str | None:
    for ch in text:
        if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs"):
            return ch
    return None


def _clean(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValueError(f"{what} is empty; give a non-blank string")
    if len(text) > limit:
        raise ValueError(f"{what} has {len(text)} characters; at most {limit} are accepted")
    bad = _bad_char(text)
    if bad is not None:
        raise ValueError(f"{what} holds the control character {ascii(bad)}; write it on one line, in plain text")
    return text


def check_namespace(namespace: object) -> str:
    """A namespace name: 1-64 letters, digits, '_', '.', '@', ':' or '-' (a user or project name)."""
    if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
        shown = namespace if isinstance(namespace, str) and len(namespace) <= 80 else type(namespace).__name__
        raise RoseMemoryError(f"namespace {shown!r} is not a valid name; use 1-64 letters, digits, '_', '.', '@', ':' or '-', "
                              "e.g. 'alice' or 'project-x'")
    return namespace


class EditRequest(BaseModel):
    """One fact to write: `prompt.format(subject)` should be completed by `target`.

    `prompt` holds `{}` exactly once where the subject goes, e.g. "{} lives in the city of".
    """

    model_config = ConfigDict(frozen=True, strict=True)

    subject: str
    prompt: str
    target: str

    @field_validator("subject", mode="before")
    @classmethod
    def _subject(cls, v: object) -> str:
        return _clean(v, "subject", MAX_SUBJECT_CHARS)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: object) -> str:
        text = _clean(v, "prompt", MAX_TEXT_CHARS)
        if text.count("{}") != 1:
            raise ValueError(
                f"prompt {text!r} must contain '{{}}' exactly once, where the subject goes "
                "(e.g. '{} lives in the city of')"
            )
        if set("{}") & set(text.replace("{}", "", 1)):
            raise ValueError(f"prompt {text!r} holds a brace besides the one '{{}}' for the subject; remove it")
        if text.replace("{}", "").strip() == "":
            raise ValueError("prompt has no words besides '{}'; add the relation, e.g. '{} works as a'")
        return text

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, v: object) -> str:
        return _clean(v, "target", MAX_TEXT_CHARS)

    @model_validator(mode="after")
    def _subject_not_in_prompt_text(self) -> "EditRequest":
        if self.subject in self.prompt.replace("{}", ""):
            raise ValueError(
                f"prompt {self.prompt!r} spells the subject out; write '{{}}' in its place"
            )
        return self

    @property
    def text(self) -> str:
        return self.prompt.format(self.subject)


def make_requests(items: object) -> list[EditRequest]:
    """Validate a list of requests (dicts or EditRequest); raise RoseMemoryError on any fault."""
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise RoseMemoryError(f"requests must be a list of edit requests, got {type(items).__name__}")
    if not items:
        raise RoseMemoryError("no edit requests given; pass at least one (subject, prompt, target)")
    out: list[EditRequest] = []
    for i, item in enumerate(items):
        if isinstance(item, EditRequest):
            out.append(item)
            continue
        if not isinstance(item, dict):
            raise RoseMemoryError(f"request {i} must be a dict with subject, prompt, target")
        try:
            out.append(EditRequest(**item))
        except ValidationError as err:
            msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            raise RoseMemoryError(f"request {i}: {msgs}") from None
    seen: dict[tuple[str, str], str] = {}
    for r in out:
        key = (r.subject, r.prompt)
        if key in seen and seen[key] != r.target:
            raise RoseMemoryError(
                f"two targets ({seen[key]!r}, {r.target!r}) for {r.prompt.format(r.subject)!r}; keep one"
            )
        seen[key] = r.target
    return out


class Fact(BaseModel):
    """What an agent states: a relation phrase and its object, e.g. ("lives in the city of", "Warsaw").

    The relation may hold `{}` for the subject ("{}'s favorite color is"); without it the
    subject is put first ("{} lives in the city of").
    """

    model_config = ConfigDict(frozen=True, strict=True)

    relation: str
    object: str

    @field_validator("relation", mode="before")
    @classmethod
    def _relation(cls, v: object) -> str:
        text = _clean(v, "relation", MAX_TEXT_CHARS)
        if text.count("{}") > 1:
            raise ValueError(f"relation {text!r} holds '{{}}' more than once; use it once, for the subject")
        if set("{}") & set(text.replace("{}", "", 1)):
            # str.format would read "{x}" or "{:>9}" as a field: the stored prompt could not be written out
            raise ValueError(f"relation {text!r} holds a brace besides one '{{}}' for the subject; remove it")
        return text

    @field_validator("object", mode="before")
    @classmethod
    def _object(cls, v: object) -> str:
        return _clean(v, "object", MAX_TEXT_CHARS)

    @property
    def prompt(self) -> str:
        return self.relation if "{}" in self.relation else "{} " + self.relation

    def request(self, subject: str) -> EditRequest:
        return EditRequest(subject=subject, prompt=self.prompt, target=self.object)


def make_facts(subject: object, facts: object, *, max_subject_chars: int = MAX_SUBJECT_CHARS,
               max_text_chars: int = MAX_TEXT_CHARS, max_facts: int = MAX_FACTS) -> list[EditRequest]:
    """Validate (subject, facts) as an agent gives them; facts are Fact, (relation, object) or dicts.

    The limits (the memory's `limits`) may only be tighter than the module's ceilings.
    """
    if isinstance(facts, (str, bytes)) or not isinstance(facts, (list, tuple)) or not facts:
        raise RoseMemoryError("facts must be a non-empty list of (relation, object) pairs")
    if len(facts) > max_facts:
        raise RoseMemoryError(f"{len(facts)} facts in one write; at most {max_facts} are accepted (limits.max_facts_per_write)")
    if isinstance(subject, str) and len(subject.strip()) > max_subject_chars:
        raise RoseMemoryError(f"subject has {len(subject.strip())} characters; at most {max_subject_chars} are accepted")
    items = []
    for i, f in enumerate(facts):
        try:
            if isinstance(f, Fact):
                fact = f
            elif isinstance(f, dict):
                fact = Fact(**f)
            elif isinstance(f, (list, tuple)) and len(f) == 2:
                fact = Fact(relation=f[0], object=f[1])
            else:
                raise RoseMemoryError(f"fact {i} must be a (relation, object) pair or a dict with relation and object")
            for what, text in (("relation", fact.relation), ("object", fact.object)):
                if len(text) > max_text_chars:
                    raise RoseMemoryError(f"fact {i}: {what} has {len(text)} characters; at most {max_text_chars} are accepted")
            items.append({"subject": subject, "prompt": fact.prompt, "target": fact.object})
        except ValidationError as err:
            msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            raise RoseMemoryError(f"fact {i}: {msgs}") from None
    return make_requests(items)


def stored_requests(subject: str, facts: list[dict]) -> list[EditRequest]:
    """The EditRequests of facts as the ledger stores them ({"prompt", "object"})."""
    return [EditRequest(subject=subject, prompt=f["prompt"], target=f["object"]) for f in facts]
