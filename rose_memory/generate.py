"""Greedy generation helpers shared by verification, the memory and the CLI."""

from __future__ import annotations

import torch

from .model import LoadedModel


def chat_prompt(lm: LoadedModel, question: str, system: str | None = None, history: list[dict] | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
    messages.append({"role": "user", "content": question})
    return lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(lm: LoadedModel, prompts: list[str], max_new_tokens: int = 24, batch_size: int = 32) -> list[str]:
    """Greedy continuations of raw prompts, batched with left padding (one generate per batch)."""
    tok = lm.tokenizer
    out: list[str] = []
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            part = prompts[i:i + batch_size]
            enc = tok(part, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
            with torch.no_grad():
                ids = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tok.pad_token_id)
            out.extend(tok.batch_decode(ids[:, enc.input_ids.shape[1]:], skip_special_tokens=True))
    finally:
        tok.padding_side = old
    return out
