"""The teacher: the model before the sleep with the subject's facts in its prompt.

Its sampled answers to the transfer questions are kept only where they state the object and
keep the subject's name whole; each kept answer is cut after the sentence that states it, and
the teacher's token distributions along it are what the student learns to match, raised at the
object's tokens to `object_floor` (the student may end up surer of the fact than the teacher).
A question the teacher never answers with the fact gets the fact's own sentence (`sentence_answers`).
Unrelated prompts (other people asked the same questions, generic chat and text) get the
model's own greedy answers and distributions: the student is held to those.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..facts import EditRequest
from ..generate import (cache_kwarg, chat_prompt, encode_prefix, eos_ids, facts_preamble, facts_system, generate_scored,
                        shared_length)
from ..model import LoadedModel
from ..text import first_mention
from .config import SleepConfig
from .people import person_questions
from .sampling import sample
from .transfer import FactQuestions

# Unrelated prompts the student is held to (none about any subject written here, and none of the
# benchmark's locality prompts: until 2026-12-03 two of them were here word for word, "What is the
# capital of Italy?" and "Who wrote Romeo and Juliet?", and "The largest planet in the solar system is").
GENERIC_CHAT = ("What is the capital of Canada?", "How do plants make their food?", "Give me a tip for sleeping better.",
                "What is 12 times 7?", "Who painted the Mona Lisa?", "Why is the sky blue?",
                "Name three fruits.", "How do I boil an egg?", "What language is spoken in Brazil?",
                "Tell me a fun fact about space.", "What does a doctor do?", "Translate 'thank you' into French.")
GENERIC_TEXT = ("The capital of Germany is", "Water boils at a temperature of", "The longest river in Africa is",
                "My favorite season of the year is", "The first president of the United States was",
                "Most people who live in Spain speak")


@dataclass
class Example:
    """One training sequence: prompt ids, answer ids, and the distributions to match at each answer token."""
    prompt: list[int]
    answer: list[int]
    target_logprobs: torch.Tensor  # [len(answer), vocab], float32 on the CPU
    kind: str                      # "fact" or "unrelated"
    text: str = ""


def sentence_with(answer: str, obj: str) -> str | None:
    """`answer` cut after the sentence that first names `obj` as a whole word; None if it never does."""
    m = first_mention(answer, obj)
    if m is None:
        return None
    end = re.search(r"[.!?\n]", answer[m.end():])
    return answer[: m.end() + (end.start() + 1 if end else len(answer) - m.end())].rstrip()


def object_positions(tok, answer: list[int], obj: str) -> list[int]:
    """Indexes of the answer tokens that spell the first whole-word `obj` in it (by decoded lengths,
    so any tokenizer will do); [] if the decoded answer never names it."""
    text = tok.decode(answer)
    m = first_mention(text, obj)
    if m is None:
        return []
    ends = [len(tok.decode(answer[: i + 1])) for i in range(len(answer))]
    return [i for i, (s, e) in enumerate(zip([0, *ends[:-1]], ends)) if s < m.end() and e > m.start()]


def raise_object(logprobs: torch.Tensor, answer: list[int], positions: list[int], floor: float) -> None:
    """In place: at each of `positions`, the teacher's distribution mixed with the answer's own token
    until that token has at least `floor` of the mass (the rest keeps its proportions)."""
    for i in positions:
        p = logprobs[i].exp()
        have = float(p[answer[i]])
        if have < floor:
            mix = (floor - have) / (1.0 - have)
            p = p * (1.0 - mix)
            p[answer[i]] += mix
            logprobs[i] = p.clamp_min(1e-30).log()


def names_other(answer: str, fact: EditRequest, facts: list[EditRequest]) -> bool:
    """`answer` names the object of another of `facts` (its own object blanked first, so 'ice cream'
    does not count as 'cream')."""
    rest = answer
    while (m := first_mention(rest, fact.target)) is not None:
        rest = rest[: m.start()] + " " + rest[m.end():]
    own = fact.target.strip().lower()
    return any(first_mention(rest, r.target) is not None for r in facts if r.target.strip().lower() != own)


def stop_id(lm: LoadedModel) -> int:
    """The token that ends the model's turn."""
    tok = lm.tokenizer
    return tok.eos_token_id if isinstance(tok.eos_token_id, int) else eos_ids(lm)[0]


def _name_intact(answer: str, subject: str) -> bool:
    first = subject.split()[0]
    return first.lower() not in answer.lower() or subject.lower() in answer.lower()


def right_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one right-padded batch: ids and attention mask [n, longest row]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def prefixed_batch(body: torch.nn.Module, rows: list[list[int]], prompts: list[list[int]], pad: int, device,
                   encode=None) -> tuple[torch.Tensor, torch.Tensor, dict, int]:
    """Token rows as one right-padded batch after the beginning their prompts share (`shared_length`:
    every row keeps a prompt token of its own), that beginning run once by `encode(body, tokens,
    device)` (default `encode_prefix`) and its key/value cache repeated for the batch: ids, mask (the beginning included),
    the forward's keyword arguments and the beginning's length (0: none shared)."""
    shared = shared_length(prompts)
    ids, mask = right_padded([r[shared:] for r in rows], pad)
    kwargs = {}
    if shared:
        cache = (encode or encode_prefix)(body, rows[0][:shared], device)
        cache.batch_repeat_interleave(len(rows))
        mask = torch.cat([torch.ones(len(rows), shared, dtype=mask.dtype), mask], 1)
        kwargs = {cache_kwarg(body): cache, "use_cache": True}
    return ids.to(device), mask.to(device), kwargs, shared


def body_and_pad(lm: LoadedModel) -> tuple[torch.nn.Module, int]:
    """The model without its output head (hidden states out), and the id that pads a batch."""
    body = lm.model.base_model if hasattr(lm.model, "base_model") else lm.model
    return body, lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0


def _logprobs(lm: LoadedModel, prompts: list[list[int]], answers: list[list[int]], chunk: int = 16) -> list[torch.Tensor]:
    """Log-probabilities the current weights give at each answer token's position (teacher forcing),
    in right-padded batches: a causal model's real tokens never see the padding after them. Rows are
    sorted so that a batch mostly shares its prompt's beginning (the chat template's system turn, the
    teacher's facts: 24-90 tokens of a 40-110-token row); that prefix runs once and its key/value
    cache serves the batch."""
    out: list[torch.Tensor | None] = [None] * len(prompts)
    body, pad = body_and_pad(lm)
    head = lm.model.get_output_embeddings()
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i], i))
    with torch.no_grad():
        for start in range(0, len(order), chunk):
            idx = order[start:start + chunk]
            ids, mask, kwargs, shared = prefixed_batch(body, [prompts[i] + answers[i] for i in idx],
                                                       [prompts[i] for i in idx], pad, lm.device)
            h = body(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
            for j, i in enumerate(idx):
                s = len(prompts[i]) - shared - 1
                out[i] = torch.log_softmax(head(h[j, s: s + len(answers[i])]).float(), -1).cpu()
    return out  # type: ignore[return-value]


def teacher_examples(lm: LoadedModel, facts: list[FactQuestions], open_requests: list[str],
                     cfg: SleepConfig) -> tuple[list[Example], list[dict]]:
    """Kept teacher answers for every training question, open request and edit form; and per-fact counts."""
    tok = lm.tokenizer
    reqs = [f.request for f in facts]
    subject = reqs[0].subject
    sentences = [f"{r.text} {r.target}." for r in reqs]
    system = facts_system(sentences)
    asks: list[tuple[str, list[EditRequest]]] = [(q, [f.request]) for f in facts for q in f.train]
    asks += [(q, reqs) for q in open_requests]
    answers = sample(lm, [chat_prompt(lm, q, system=system) for q, _ in asks], n=cfg.samples,
                     temperature=cfg.temperature, max_new_tokens=cfg.answer_tokens, seed=cfg.seed, greedy_too=True)
    # (student prompt, teacher prompt, answer, fact, chat, the fact's own sentence standing in for the
    # teacher's, asked about this one fact)
    pairs: list[tuple[str, str, str, EditRequest, bool, bool, bool]] = []
    for (q, about), texts in zip(asks, answers):
        kept: list[str] = []
        for t in texts:
            if not _name_intact(t, subject):
                continue
            for r in about:
                cut = sentence_with(t, r.target)
                if cut and cfg.exclusive_answers and len(about) == 1 and names_other(cut, r, reqs):
                    continue
                if cut and cut not in kept and len(kept) < cfg.keep_per_question:
                    kept.append(cut)
                    pairs.append((chat_prompt(lm, q), chat_prompt(lm, q, system=system), cut, r, True, False, len(about) == 1))
                    break
        if not kept and cfg.sentence_answers and len(about) == 1:
            # the teacher never stated this fact here: the answer is the fact's own sentence, along
            # which the teacher (who has it in its prompt) gives its distributions all the same
            r = about[0]
            pairs.append((chat_prompt(lm, q), chat_prompt(lm, q, system=system), f"{r.text} {r.target}.", r, True, True, True))
    for r in reqs:  # the edit's own wording, so that the sleep delta alone also completes it
        pairs.append((r.text, facts_preamble(sentences, r.text), f" {r.target}.", r, False, False, False))
    # a rendered chat prompt already holds its special tokens
    s_ids = [tok(p[0], add_special_tokens=not p[4])["input_ids"] for p in pairs]
    t_ids = [tok(p[1], add_special_tokens=not p[4])["input_ids"] for p in pairs]
    a_ids = [tok(p[2], add_special_tokens=False)["input_ids"] for p in pairs]
    stops = [cfg.stop_floor > 0 and p[6] for p in pairs]  # an answer to one fact's question ends the turn
    a_ids = [a + [stop_id(lm)] if s else a for a, s in zip(a_ids, stops)]
    logps = _logprobs(lm, t_ids, a_ids)
    for a, lp, p, s in zip(a_ids, logps, pairs, stops):
        if cfg.object_floor > 0:
            raise_object(lp, a, object_positions(tok, a, p[3].target), cfg.object_floor)
        if s:
            raise_object(lp, a, [len(a) - 1], cfg.stop_floor)
    examples = [Example(s, a, lp, "fact", text=p[2]) for s, a, lp, p in zip(s_ids, a_ids, logps, pairs)]
    counts = [{"prompt": r.prompt, "object": r.target,
               "kept_answers": sum(p[3] is r and p[4] and not p[5] for p in pairs),
               "sentence_answers": sum(p[3] is r and p[5] for p in pairs)} for r in reqs]
    return examples, counts


def _other_people(lm: LoadedModel, facts: list[FactQuestions], names: list[str], cfg: SleepConfig) -> list[list[int]]:
    """Prompt ids: each name asked two of this subject's question forms and `person_questions`
    everyday ones (chat), and one of this subject's edit forms (raw text)."""
    tok = lm.tokenizer
    subject = facts[0].request.subject
    forms = [q for f in facts for q in f.train + f.held if subject in q]
    chats, raws = [], []
    for i, name in enumerate(names):
        chats += [forms[(i * 2 + k) % len(forms)].replace(subject, name) for k in range(2)] if forms else []
        chats += person_questions(name, cfg.person_questions, i * cfg.person_questions)
        raws.append(facts[i % len(facts)].request.prompt.replace("{}", name))
    return ([tok(chat_prompt(lm, q), add_special_tokens=False)["input_ids"] for q in chats]
            + [tok(t)["input_ids"] for t in raws])


def other_people_prompts(lm: LoadedModel, facts: list[FactQuestions], names: list[str], cfg: SleepConfig) -> list[Example]:
    """The same prompts about `names`, without answers (inputs for the `inputs="subject"` null space)."""
    return [Example(p, [], torch.zeros(0), "unrelated") for p in _other_people(lm, facts, names, cfg)]


def canary_prompts(lm: LoadedModel, facts: list[FactQuestions], names: list[str], cfg: SleepConfig) -> list[list[int]]:
    """Prompts about people the student never sees, for choosing the sleep delta's scale."""
    return _other_people(lm, facts, names, cfg)


def remembered_prompts(lm: LoadedModel, remembered: Sequence[EditRequest], cfg: SleepConfig) -> list[list[int]]:
    """Facts the memory holds about other subjects: each in its edit form (raw text), and each of their
    subjects asked an open request (chat); at most `cfg.remembered` facts, a seeded draw when there are more."""
    tok = lm.tokenizer
    chosen = list(remembered)
    if len(chosen) > cfg.remembered:
        chosen = random.Random(cfg.seed).sample(chosen, cfg.remembered)
    subjects = list(dict.fromkeys(r.subject for r in chosen))
    return ([tok(r.prompt.replace("{}", r.subject))["input_ids"] for r in chosen]
            + [tok(chat_prompt(lm, f"Tell me about {s}."), add_special_tokens=False)["input_ids"] for s in subjects])


def unrelated_examples(lm: LoadedModel, facts: list[FactQuestions], names: list[str], cfg: SleepConfig,
                       remembered: Sequence[EditRequest] = ()) -> list[Example]:
    """Other people asked this subject's and everyday questions, generic prompts, and the facts the memory
    holds about other subjects (`remembered`), with the model's own answers."""
    tok = lm.tokenizer
    generic_raw = list(GENERIC_TEXT[: cfg.generic_negatives // 2])  # half text, half chat
    chats = list(GENERIC_CHAT[: cfg.generic_negatives - len(generic_raw)])
    prompts = _other_people(lm, facts, names, cfg)
    prompts += [tok(chat_prompt(lm, q), add_special_tokens=False)["input_ids"] for q in chats]
    prompts += [tok(t)["input_ids"] for t in generic_raw]
    prompts += remembered_prompts(lm, remembered, cfg) if cfg.remembered > 0 else []
    # the distributions come from the generation itself (a second forward over prompt + answer took a
    # third of this step's time and gave the same figures)
    answers, logps = generate_scored(lm, prompts, max_new_tokens=cfg.negative_tokens)
    return [Example(p, a, lp, "unrelated") for p, a, lp in zip(prompts, answers, logps) if a]
