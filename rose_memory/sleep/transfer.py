"""The transfer set: questions about each fact, made from the relation's own words and by the model.

Nothing here reads a benchmark file. Three sources, all generic English:
- sentence forms of the edit itself ("Complete the sentence: ...", "Fill in the blank: ...");
- questions derived from the relation's words by a small grammar: "{}'s favorite food is"
  gives "What is X's favorite food?"; "{} lives in the city of" gives "Which city does X live
  in?"; "The language {} speaks at home is" gives "What language does X speak at home?"; "{} was
  born in" gives "Where was X born?"; "On stage, {} plays the" gives "What does X play on
  stage?" (a verb in -s or the past is put back to its base form with "does"/"did", adverbs such
  as "now" stay; anything the grammar cannot read is skipped);
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
PREPOSITIONS = {"of", "in", "at", "as", "to", "for", "with", "on", "from", "by", "into", "near", "about"}
IRREGULAR = {"has": "have", "is": None, "was": None, "are": None, "were": None, "does": "do", "goes": "go",
             "had": "have", "did": "do", "went": "go", "grew": "grow", "spoke": "speak", "wrote": "write",
             "drove": "drive", "ate": "eat", "drank": "drink", "wore": "wear", "took": "take", "made": "make"}
BE = {"is", "was", "are", "were"}
# words between the subject and its verb ("{} now lives in"); any other word ending in -ly counts too
ADVERBS = {"now", "still", "always", "usually", "often", "also", "mostly", "sometimes", "never", "just", "once"}
# verbs whose "in"/"at" object is a place: also asked with "Where"
PLACE_VERBS = {"live", "reside", "stay", "settle", "born", "raised", "grow", "grew", "study", "work"}
WH = ("what", "which", "where", "who", "whom", "whose", "how", "when", "why", "name", "tell", "can", "do", "does", "is")


@dataclass
class FactQuestions:
    request: EditRequest
    train: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)


def _base_verb(verb: str) -> tuple[str, str] | None:
    """(do-support, base form) of a verb in the present -s or the past: "lives" -> ("does", "live"),
    "studied" -> ("did", "study"); None for anything else (a base form, "is", a noun)."""
    v = verb.lower()
    if v in IRREGULAR:
        base = IRREGULAR[v]
        return None if base is None else ("does" if v.endswith("s") else "did", base)
    if len(v) >= 4 and v.endswith("ed"):
        if v.endswith("ied"):
            return "did", v[:-3] + "y"
        if re.search(r"([bdgmnprt])\1ed$", v):              # stopped -> stop
            return "did", v[:-3]
        if re.search(r"(v|c|g|z|u|[^s]s|[aeiou]k)ed$", v):
            return "did", v[:-1]                              # lived, raced, changed, used, liked -> drop the d
        return "did", v[:-2]
    if not v.endswith("s") or v.endswith("us") or len(v) < 3:
        return None
    if re.search(r"(sh|ch|x|z|o|ss)es$", v):
        return "does", v[:-2]
    if v.endswith("ss"):
        return None
    if re.search(r"[^aeiou]ies$", v):
        return "does", v[:-3] + "y"
    return "does", v[:-1]


def _leading(prompt: str) -> tuple[str, str]:
    """A prepositional phrase before the subject ("On stage, {} plays the") moves to the end of
    the question ("... on stage?"): (the phrase, lower-cased, or "", the rest)."""
    m = re.fullmatch(r"((?:on|in|at|during|after|before|for|with)\b[^{}]*?),? (\{\}.*)", prompt, flags=re.I)
    if not m:
        return "", prompt
    lead = m.group(1)
    return lead[0].lower() + lead[1:], m.group(2)


def _ask(q: str, lead: str) -> str:
    return q if not lead else q[:-1] + f" {lead}{q[-1]}"


def relation_questions(req: EditRequest) -> list[str]:
    """Questions the relation's own words allow, by the grammar in the module docstring."""
    s = req.subject
    lead, prompt = _leading(req.prompt.strip())
    m = re.fullmatch(r"\{\}'s (.+?) (is|are|was|were)(?: (?:the|a|an))?", prompt)
    if m:
        return [_ask(f.format(s=s, rel=m.group(1)), lead) for f in POSSESSIVE_FORMS]
    # "The language {} speaks at home is" -> "What language does X speak at home?"
    m = re.fullmatch(r"The (\w+) \{\} (\w+)((?: [\w'-]+)*?) (?:is|are|was|were)(?: (?:the|a|an))?", prompt)
    if m:
        verb = _base_verb(m.group(2))
        if verb is None:
            return []
        do, base = verb
        noun, rest = m.group(1).lower(), m.group(3)
        return [_ask(q, lead) for q in (f"What {noun} {do} {s} {base}{rest}?", f"Which {noun} {do} {s} {base}{rest}?",
                                        f"Tell me the {noun} {s} {m.group(2)}{rest}.")]
    m = re.fullmatch(r"\{\} ([\w'-]+(?: [\w'-]+)*)", prompt)
    if not m:
        return []
    words = m.group(1).split()
    adverbs = []
    while len(words) > 1 and (words[0].lower() in ADVERBS or words[0].lower().endswith("ly")):
        adverbs.append(words.pop(0))
    verb, words = words[0], words[1:]
    if verb.lower() in BE:   # "was born in", "was raised in the city of": the participle follows
        if not words or words[0].lower() in ARTICLES | PREPOSITIONS:
            return []
        do, base, said = verb.lower(), words[0], f"{verb.lower()} {words[0]}"
        words = words[1:]
    else:
        v = _base_verb(verb)
        if v is None:
            return []
        (do, base), said = v, verb
    adv = "".join(f" {a}" for a in adverbs)
    # the last article splits the words: before it the verb's complement ("in", "to work on"), after it
    # the object's kind ("city" in "the city of", "pet" in "a pet"), asked as "Which city ...?"
    idx = max((i for i, w in enumerate(words) if w.lower() in ARTICLES), default=None)
    before = words[:idx] if idx is not None else words
    after = words[idx + 1:] if idx is not None else []
    while after and after[-1].lower() in PREPOSITIONS:
        after = after[:-1]
    kind = None
    if after:
        measure = words[idx].lower() != "the" and words[-1].lower() == "of"   # "a glass of" names no kind
        if len(after) == 1 and not measure:
            kind = after[0]
        else:                     # "drives a car made by": asked with all its words
            before, after = words, []
            while before and before[-1].lower() in ARTICLES:
                before = before[:-1]
    if before and before[-1].lower() not in PREPOSITIONS:
        before = []               # "speaks fluent": "What does X speak?"
    tail = "".join(f" {w}" for w in before)
    out = []
    if kind:
        out += [f"Which {kind} {do} {s}{adv} {base}{tail}?", f"What {kind} {do} {s}{adv} {base}{tail}?",
                f"Tell me the {kind} {s}{adv} {said}{tail}."]
    else:
        out += [f"What {do} {s}{adv} {base}{tail}?", f"Do you know what {s}{adv} {said}{tail}?"]
    if not kind and base.lower() in PLACE_VERBS and [w.lower() for w in before] in (["in"], ["at"]):
        out.append(f"Where {do} {s}{adv} {base}?")
    return [_ask(q, lead) for q in out]


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
