"""Per-fact gating: each fact asked with the questions held back from training, and in its edit form."""

from __future__ import annotations

from ..generate import chat_prompt, generate_ids
from ..model import LoadedModel
from ..text import mentions
from .config import SleepConfig
from .transfer import FactQuestions


def check_facts(lm: LoadedModel, facts: list[FactQuestions], cfg: SleepConfig) -> list[dict]:
    """Greedy answers of the current weights; a fact passes if its edit form and enough held-back questions name it."""
    tok = lm.tokenizer
    prompts, owners = [], []
    for i, f in enumerate(facts):
        prompts.append(tok(f.request.text)["input_ids"])
        owners.append((i, "edit", f.request.text))
        for q in f.held:
            prompts.append(tok(chat_prompt(lm, q), add_special_tokens=False)["input_ids"])
            owners.append((i, "held", q))
    answers = generate_ids(lm, prompts, max_new_tokens=cfg.gate_tokens)
    out = [{"prompt": f.request.prompt, "object": f.request.target, "edit": False, "held_out": [], "answers": []}
           for f in facts]
    for (i, kind, q), ids in zip(owners, answers):
        text = tok.decode(ids, skip_special_tokens=True).strip()
        hit = mentions(text, facts[i].request.target)
        if kind == "edit":
            out[i]["edit"] = hit
        else:
            out[i]["held_out"].append(hit)
        out[i]["answers"].append({"question": q, "answer": text, "hit": hit})
    for r in out:
        share = sum(r["held_out"]) / len(r["held_out"]) if r["held_out"] else 0.0
        r["held_out"] = share
        r["passed"] = bool(r["edit"] and share >= cfg.min_held_out)
    return out
