"""Facts from a user's message, for turns in which the agent did not call the memory tool.

The model is asked for structured output, validated by pydantic: the subject, and each fact
as a short phrase in the user's own words ("lives in Warsaw", "plays the cello"). A 135M model
fills this shape reliably when shown a few worked examples, whereas asking it to split each
fact into relation and object, or to fill a JSON schema listed in its prompt, mostly fails
(measured on the embedded model: subjects right, relations and objects swapped or invented).
The split into (relation, object) is then done on the phrase, and everything is checked
against the message: the subject must occur in it and every content word of a fact too, so a
hallucinated fact is dropped instead of being written into the weights.

The local model (`RoseChatModel`) is prompted for JSON directly, starting its answer with
`{"subject": "`; any other LangChain chat model is used through `with_structured_output`.
"""

from __future__ import annotations

import json
import re

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, Field, ValidationError, field_validator

from .chat_model import RoseChatModel, _first_json

INSTRUCTION = (
    "List the facts the user states about a person or thing: the subject as written, and each "
    "fact as a short phrase in the user's words. Questions and small talk have no facts."
)
QUESTION_START = re.compile(
    r"^\s*(who|whom|whose|what|where|when|why|how|which|do|does|did|is|are|was|were|can|could|"
    r"would|will|should|tell me|remind me|name)\b",
    re.I,
)


class Extraction(BaseModel):
    """The facts a user's message states about one subject."""

    subject: str = Field(default="", description="Who or what the facts are about, as written; '' if none.")
    facts: list[str] = Field(
        default_factory=list,
        description="Each fact as a short phrase in the user's words, e.g. 'lives in Warsaw'; [] if none.",
    )

    @field_validator("subject", mode="before")
    @classmethod
    def _subject(cls, v):
        return v.strip() if isinstance(v, str) else v

    @field_validator("facts", mode="before")
    @classmethod
    def _facts(cls, v):
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):  # tolerate {"relation", "object"} items from larger models
            v = [f"{x.get('relation', '')} {x.get('object', '')}" if isinstance(x, dict) else x for x in v]
            return [x.strip() for x in v if isinstance(x, str) and x.strip()]
        return v


class Facts(BaseModel):
    """What gets written: a subject and (relation, object) pairs, all grounded in the message."""

    subject: str = ""
    pairs: list[tuple[str, str]] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.pairs


# Worked examples. Their names, places and objects do not occur in the benchmark's
# conversation (benchmarks/chat_recall.py), so they cannot leak answers into it.
EXAMPLES: list[tuple[str, dict]] = [
    ("My neighbour Tomasz Wierzba is a baker and he lives in Gdansk.",
     {"subject": "Tomasz Wierzba", "facts": ["is a baker", "lives in Gdansk"]}),
    ("Lena Morrow's favorite food is sushi. She plays the violin.",
     {"subject": "Lena Morrow", "facts": ["favorite food is sushi", "plays the violin"]}),
    ("What is the capital of France?", {"subject": "", "facts": []}),
    ("By the way, Oskar Lind was born in Bergen and has a cat named Pepper.",
     {"subject": "Oskar Lind", "facts": ["was born in Bergen", "has a cat named Pepper"]}),
    ("Thanks, that was helpful!", {"subject": "", "facts": []}),
]

# Words that link a relation to its object: the object starts after the last of them.
LINKS = {"is", "are", "was", "were", "a", "an", "the", "in", "as", "named", "called", "of", "at", "from",
         "to", "for", "with", "on", "by", "into", "speaks", "likes", "loves", "plays", "drives", "owns"}
# Words a fact may use that the message need not contain ("works as a pilot" -> "is a pilot").
FILLER = {"a", "an", "the", "of", "is", "are", "was", "s", "her", "his", "their"}


def looks_like_statement(text: str) -> bool:
    """False for questions: the extractor is not asked about them."""
    text = text.strip()
    return bool(text) and not text.endswith("?") and not QUESTION_START.match(text)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _norm(text: str) -> str:
    return " ".join(_words(text))


def split_fact(phrase: str) -> tuple[str, str] | None:
    """'lives in Warsaw' -> ('lives in', 'Warsaw'); 'has a dog named Biscuit' -> ('has a dog named', 'Biscuit').

    The object is a trailing run of capitalised words, else what follows the last linking
    word, else the last word.
    """
    tokens = phrase.strip().rstrip(".!").split()
    if len(tokens) < 2:
        return None
    k = len(tokens)
    while k > 1 and tokens[k - 1][:1].isupper():
        k -= 1
    if k == len(tokens):
        links = [i for i, t in enumerate(tokens[:-1]) if t.lower() in LINKS]
        k = links[-1] + 1 if links else len(tokens) - 1
    rel, obj = " ".join(tokens[:k]), " ".join(tokens[k:])
    return (rel, obj) if rel and obj else None


# Not subjects, though a small model offers them as such ("Hi! I just moved." -> subject "Hi").
NOT_SUBJECTS = {"hi", "hello", "hey", "thanks", "thank you", "ok", "okay", "yes", "no", "sure", "great",
                "please", "sorry", "well", "i", "me", "you", "we", "it", "this", "that", "there", "he",
                "she", "they", "my", "by the way"}


def _subject_in(text: str, subject: str) -> str:
    """The subject as it occurs in `text`: a name (a capitalised word), not a greeting or pronoun.

    A long 'subject' is cut to its last capitalised name.
    """
    words = subject.split()
    if len(words) > 4:
        names = re.findall(r"(?:[A-Z][\w'-]+\s?)+", subject)
        subject = names[-1].strip() if names else ""
    if not subject or _norm(subject) in NOT_SUBJECTS or not any(w[:1].isupper() for w in subject.split()):
        return ""
    return subject if _norm(subject) in _norm(text) else ""


def ground(extraction: Extraction, text: str) -> Facts:
    """Keep only facts the message states: subject and every content word of each fact occur in it."""
    subject = _subject_in(text, extraction.subject)
    if not subject:
        return Facts()
    src_words, src = set(_words(text)), _norm(text)
    pairs: list[tuple[str, str]] = []
    for phrase in extraction.facts:
        phrase = phrase.replace("{}", "").strip()
        words = _words(phrase)
        if not words or any(w not in src_words and w not in FILLER for w in words):
            continue
        if _norm(subject) in _norm(phrase):
            continue
        split = split_fact(phrase)
        if split is None:
            continue
        rel, obj = split
        if set(_words(rel)) <= {"is", "are", "was", "were"}:
            continue  # "Thanks is helpful": a bare copula says nothing worth remembering
        owner = [f"{subject}'s", "his", "her", "their"]
        if any(_norm(f"{o} {phrase}") in src for o in owner) and not rel.startswith("{}"):
            rel = "{}'s " + rel  # "Mirela's favorite color is teal", "Her favorite color is teal"
        if (rel, obj) not in pairs:
            pairs.append((rel, obj))
    return Facts(subject=subject, pairs=pairs) if pairs else Facts()


class FactExtractor:
    """`extract(text) -> Facts` (possibly empty) with the local model or any tool-calling chat model."""

    def __init__(self, model: BaseChatModel, instruction: str = INSTRUCTION, max_new_tokens: int = 64):
        self.model = model
        self.instruction = instruction
        self.max_new_tokens = max_new_tokens
        if not isinstance(model, RoseChatModel):
            self.runnable = model.with_structured_output(Extraction, include_raw=True)

    def ask(self, text: str) -> Extraction:
        """The model's raw extraction (validated, not yet grounded)."""
        if isinstance(self.model, RoseChatModel):
            return self._ask_local(text)
        messages: list[BaseMessage] = [SystemMessage(self.instruction)]
        for i, (user, args) in enumerate(EXAMPLES):
            call_id = f"example_{i}"
            messages += [HumanMessage(user),
                         AIMessage("", tool_calls=[{"name": "Extraction", "args": args, "id": call_id}]),
                         ToolMessage("ok", tool_call_id=call_id, name="Extraction")]
        out = self.runnable.invoke([*messages, HumanMessage(text)])
        parsed = out.get("parsed") if isinstance(out, dict) else out
        return parsed if isinstance(parsed, Extraction) else Extraction()

    def _ask_local(self, text: str) -> Extraction:
        tok = self.model.lm.tokenizer
        turns = [{"role": "system", "content": self.instruction}]
        for user, args in EXAMPLES:
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": json.dumps(args)}]
        turns.append({"role": "user", "content": text})
        start = '{"subject": "'
        prompt = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + start
        answer, _, _ = self.model.complete(prompt, max_new_tokens=self.max_new_tokens)
        try:
            return Extraction.model_validate(_first_json(start + answer))
        except (ValueError, ValidationError):
            return Extraction()

    def extract(self, text: str) -> Facts:
        return ground(self.ask(text), text)
