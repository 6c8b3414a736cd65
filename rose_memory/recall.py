"""Greedy answers of the memory's model, and how well they recall the facts of a write."""

from __future__ import annotations

from .facts import EditRequest
from .generate import generate_ids
from .memory_config import VerifyConfig
from .model import LoadedModel
from .text import mentions


def chat_text(lm: LoadedModel, question: str, history: list | None = None) -> str:
    """`question` (after `history`) through the tokenizer's chat template, or a plain Question/Answer form."""
    tok = lm.tokenizer
    messages = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in (history or [])]
    messages.append({"role": "user", "content": question})
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages[:-1])
    return f"{turns}Question: {question}\nAnswer:"


def greedy(lm: LoadedModel, prompts: list[tuple[str, bool]], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation tokens of a batch of (text, is_chat) prompts (end of sequence cut)."""
    tok = lm.tokenizer
    ids = [tok(t, add_special_tokens=not chat)["input_ids"] for t, chat in prompts]
    return generate_ids(lm, ids, max_new_tokens=max_new_tokens)


def decode(lm: LoadedModel, ids: list[int]) -> str:
    return lm.tokenizer.decode(ids, skip_special_tokens=True).strip()


def measure(lm: LoadedModel, vc: VerifyConfig, subject: str, reqs: list[EditRequest]) -> dict:
    """Recall of each fact in its edit form and in chat, and in a general question about the subject."""
    prompts = [(r.text, False) for r in reqs]
    prompts += [(chat_text(lm, vc.chat_question.format(text=r.text, subject=subject)), True) for r in reqs]
    prompts.append((chat_text(lm, vc.about_question.format(subject=subject)), True))
    outs = greedy(lm, prompts, max(vc.raw_tokens, vc.chat_tokens))
    raw = [decode(lm, o[: vc.raw_tokens]) for o in outs[: len(reqs)]]
    chat, about = [decode(lm, o) for o in outs[len(reqs): 2 * len(reqs)]], decode(lm, outs[-1])
    hits = lambda texts: [mentions(t, r.target) for t, r in zip(texts, reqs)]  # noqa: E731
    e, c = hits(raw), hits(chat)
    a = [mentions(about, r.target) for r in reqs]
    return {
        "edit": sum(e) / len(reqs), "chat": sum(c) / len(reqs), "about": sum(a) / len(reqs),
        "answers": [{"fact": f"{r.text} {r.target}", "edit": x, "chat": y} for r, x, y in zip(reqs, raw, chat)],
        "about_answer": about,
    }


def passes(vc: VerifyConfig, recall: dict) -> str | None:
    """None when `recall` meets the configured minimums, else why not."""
    if recall["edit"] < vc.min_edit_recall:
        return f"recall in the edit's own wording {recall['edit']:.2f} < {vc.min_edit_recall}"
    if recall["chat"] < vc.min_chat_recall:
        return f"recall in chat {recall['chat']:.2f} < {vc.min_chat_recall}"
    return None
