"""Sampled generation (the teacher's answers, the model's own questions); greedy lives in rose_memory.generate."""

from __future__ import annotations

import torch

from ..generate import generate_ids
from ..model import LoadedModel


def sample(lm: LoadedModel, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
           seed: int = 0, greedy_too: bool = False) -> list[list[str]]:
    """`n` sampled continuations of each rendered prompt (plus its greedy one first if `greedy_too`).

    Through `generate_ids`, each prompt repeated `n` times: a batch's shared beginning (the teacher's
    system turn with the facts, 90 of 110 tokens) is then encoded once; `generate`'s own
    `num_return_sequences` would encode each copy whole. Seeded, so a sleep is repeatable."""
    from transformers import GenerationConfig

    tok = lm.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[list[str]] = [[] for _ in prompts]
    if greedy_too:
        for i, a in enumerate(generate_ids(lm, ids, max_new_tokens=max_new_tokens)):
            out[i].append(tok.decode(a, skip_special_tokens=True).strip())
    if n > 0:
        config = GenerationConfig(do_sample=True, temperature=temperature, top_p=0.95)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(seed))))
        rows = [p for p in ids for _ in range(n)]
        for j, a in enumerate(generate_ids(lm, rows, max_new_tokens=max_new_tokens, config=config)):
            out[j // n].append(tok.decode(a, skip_special_tokens=True).strip())
    return out
