"""The transfer set: questions about each fact, made from the relation's own words and by the model.

Nothing here reads a benchmark file. Three sources, all generic English:
- sentence forms of the edit itself ("Complete the sentence: ...", "Fill in the blank: ...");
- questions derived from the relation's words by a small grammar: "{}'s favorite food is"
  gives "What is X's favorite food?"; "{} lives in the city of" gives "Which city does X live
  in?" (a verb in -s is put back to its base form; anything the grammar cannot read is skipped);
- questions the model itself writes when asked to rewrite the fact as a question, kept only
  if they name the subject exactly, end in '?', and do not give the object away.
Open requests about the subject ("Tell me about X.") are shared by all its facts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from ..facts import EditRequest
from ..generate import chat_prompt
from ..model import LoadedModel
from .config import SleepConfig
from .sampling import sample

SENTENCE_FORMS = ("Complete the sentence: {text} ...", "Fill in the blank: {text} ___.", "{text} what?",
                  "Finish this: {text}")
OPEN_FORMS = ("Tell me about {subject}.", "What do you know about {subject}?", "Who is {subject}?")
POSSESSIVE_FORMS = ("What is {s}'s {rel}?", "Tell me {s}'s {rel}.", "Do you know {s}'s {rel}?",
                    "What's {s}'s {rel}?")
QUESTION_REQUEST = 'Rewrite as a question: "{sentence}"'

ARTICLES = {"a", "an", "the"}
PREPOSITIONS = {"of", "in", "at", "as", "to", "for", "with", "on", "from", "by", "into", "near"}
IRREGULAR = {"has": "have", "is": None, "was": None, "does": "do", "goes": "go"}
WH = ("what", "which", "where", "who", "whom", "whose", "how", "when", "why", "name", "tell", "can", "do", "does", "is")


@dataclass
class FactQuestions:
    request: EditRequest
    train: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)


def _base_verb(verb: str) -> str | None:
    v = verb.lower()
    if v in IRREGULAR:
        return IRREGULAR[v]
    if not v.endswith("s") or v.endswith("ss") or len(v) < 3:
        return None
    if re.search(r"(sh|ch|x|z|o)es$", v):
        return v[:-2]
    if re.search(r"[^aeiou]ies$", v):
        return v[:-3] + "y"
    return v[:-1]


def relation_questions(req: EditRequest) -> list[str]:
    """Questions the relation's own words allow, by the grammar in the module docstring."""
    s, prompt = req.subject, req.prompt.strip()
    m = re.fullmatch(r"\{\}'s (.+?) (is|are|was|were)", prompt)
    if m:
        return [f.format(s=s, rel=m.group(1)) for f in POSSESSIVE_FORMS]
    m = re.fullmatch(r"\{\} (\w+)((?: [\w'-]+)*)", prompt)
    if not m:
        return []
    base = _base_verb(m.group(1))
    if base is None:
        return []
    words = m.group(2).split()
    out = []
    # "lives in the city of" -> prep "in", noun "city"; "has a pet" -> noun "pet"; "plays the" -> none
    idx = max((i for i, w in enumerate(words) if w.lower() in ARTICLES), default=None)
    before = words[:idx] if idx is not None else words
    after = words[idx + 1:] if idx is not None else []
    while after and after[-1].lower() in PREPOSITIONS:
        after = after[:-1]
    prep = " ".join(w for w in before if w.lower() in PREPOSITIONS)
    tail = f" {prep}" if prep else ""
    if after:
        noun = " ".join(after)
        out += [f"Which {noun} does {s} {base}{tail}?", f"What {noun} does {s} {base}{tail}?",
                f"Tell me the {noun} {s} {m.group(1)}{tail}."]
    else:
        out += [f"What does {s} {base}{tail}?", f"Do you know what {s} {m.group(1)}{tail}?"]
    return out


def fixed_questions(req: EditRequest) -> list[str]:
    """The questions made without the model: the relation's grammar, then the sentence forms."""
    return relation_questions(req) + [f.format(text=req.text) for f in SENTENCE_FORMS]


def open_requests(subject: str) -> list[str]:
    return [f.format(subject=subject) for f in OPEN_FORMS]


def _good_question(q: str, req: EditRequest) -> bool:
    q = q.strip()
    return (q.endswith("?") and 12 <= len(q) <= 120 and req.subject in q and "\n" not in q
            and q.split()[0].lower().strip("\"'") in WH and req.target.lower() not in q.lower())


def model_questions(lm: LoadedModel, reqs: list[EditRequest], cfg: SleepConfig) -> list[list[str]]:
    """Questions the model writes for each fact (sampled, filtered; possibly none)."""
    if cfg.model_questions <= 0:
        return [[] for _ in reqs]
    prompts = [chat_prompt(lm, QUESTION_REQUEST.format(sentence=f"{r.text} {r.target}.")) for r in reqs]
    outs = sample(lm, prompts, n=cfg.model_questions, temperature=0.8, max_new_tokens=24, seed=cfg.seed)
    found = []
    for r, texts in zip(reqs, outs):
        kept: list[str] = []
        for t in texts:
            q = t.strip().strip('"').split("\n")[0].strip()
            if _good_question(q, r) and q not in kept:
                kept.append(q)
        found.append(kept)
    return found


def transfer_set(lm: LoadedModel, reqs: list[EditRequest], cfg: SleepConfig) -> tuple[list[FactQuestions], list[str]]:
    """Per fact, training and held-back questions; and the open requests about the subject."""
    rng = random.Random(cfg.seed)
    written = model_questions(lm, reqs, cfg)
    out = []
    for r, extra in zip(reqs, written):
        qs = list(dict.fromkeys(fixed_questions(r) + extra))
        rng.shuffle(qs)
        n_held = max(1, round(cfg.held_out * len(qs)))
        out.append(FactQuestions(r, train=qs[n_held:], held=qs[:n_held]))
    subject = reqs[0].subject
    return out, open_requests(subject)
