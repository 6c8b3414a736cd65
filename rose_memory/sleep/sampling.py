"""Sampled generation (the teacher's answers, the model's own questions); greedy lives in rose_memory.generate."""

from __future__ import annotations

import torch

from ..generate import eos_ids
from ..model import LoadedModel

ROWS_PER_CALL = 64


def sample(lm: LoadedModel, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
           seed: int = 0, greedy_too: bool = False) -> list[list[str]]:
    """`n` sampled continuations of each rendered prompt (plus its greedy one first if `greedy_too`)."""
    from transformers import GenerationConfig

    tok, model = lm.tokenizer, lm.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos_ids(lm)[0]
    stop = eos_ids(lm)
    out: list[list[str]] = [[] for _ in prompts]
    per_call = max(1, ROWS_PER_CALL // max(n, 1))
    gen = torch.Generator().manual_seed(seed)
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start:start + per_call]
            enc = tok(chunk, add_special_tokens=False, return_tensors="pt", padding=True).to(lm.device)
            runs = []
            if greedy_too:
                runs.append((GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                              eos_token_id=stop), 1))
            if n > 0:
                runs.append((GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                              top_p=0.95, num_return_sequences=n, pad_token_id=pad,
                                              eos_token_id=stop), n))
            for config, k in runs:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                with torch.no_grad():
                    ids = model.generate(**enc, generation_config=config)
                texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for i, t in enumerate(texts):
                    out[start + i // k].append(t.strip())
    finally:
        tok.padding_side = old_side
    return out
