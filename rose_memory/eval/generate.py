"""The benchmark's prompts: rendering, encoding, decoding, perplexity.

Generation itself is the package's one batched generator (`rose_memory.generate.generate_ids`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import RoseMemoryError
from ..generate import BATCH_SIZE, MAX_NEW_TOKENS, facts_preamble, facts_system, generate_ids  # noqa: F401  (the runner imports them from here)
from ..model import LoadedModel


def render(lm: LoadedModel, text: str, chat: bool, context: Sequence[str] = ()) -> str:
    """The exact string sent to the model.

    chat: `text` as the user message through the model's chat template with the generation
    prompt; `context` (fact sentences) becomes the system message. Raw: `text` itself, the
    context sentences written before it.
    """
    if chat:
        messages = []
        if context:
            messages.append({"role": "system", "content": facts_system(context)})
        messages.append({"role": "user", "content": text})
        return lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return facts_preamble(context, text) if context else text


def check_chat_template(lm: LoadedModel) -> None:
    if not getattr(lm.tokenizer, "chat_template", None):
        raise RoseMemoryError(
            f"model {lm.name!r} has no chat template; the benchmark asks its questions through one "
            "(use an instruct/chat model)"
        )


def encode(lm: LoadedModel, rendered: str, chat: bool) -> list[int]:
    # A rendered chat template already holds its special tokens.
    return lm.tokenizer(rendered, add_special_tokens=not chat).input_ids


def decode(lm: LoadedModel, ids: Sequence[int]) -> str:
    return lm.tokenizer.decode(list(ids), skip_special_tokens=True)


def perplexity(lm: LoadedModel, text: str, context: Sequence[str] = ()) -> float:
    """Perplexity of `text` (raw), after the context sentences if any; only the text's tokens are scored."""
    tok = lm.tokenizer
    prefix = tok(" ".join(context) + "\n").input_ids if context else []
    body = tok(text, add_special_tokens=not context).input_ids
    ids = torch.tensor([prefix + body], device=lm.device)
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, :-1].float()  # [len-1, vocab]
    labels = ids[0, 1:]
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    scored = nll[max(len(prefix) - 1, 0) :]  # predictions of the text's tokens
    return float(math.exp(scored.mean().item()))
