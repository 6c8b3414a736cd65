"""Greedy generation shared by the memory's verification, the CLI, the tests and the benchmark.

One batched generator (`generate_ids`): prompts are grouped, left-padded, one `generate` per
group. The prompts of a group that share a leading run of tokens (the chat template's system turn,
facts put in context) have that prefix encoded once and its key/value cache shared by the group;
the rest is left-padded after it, and the group's other prompts see none of it (masked).
Position ids follow the attention mask, so every row sees exactly the positions it would see alone.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections import Counter
from collections.abc import Sequence

import torch

from .model import LoadedModel
from .progress import bar as progress_bar

MAX_NEW_TOKENS = 24
BATCH_SIZE = 128  # prompts per generate call
MAX_BATCH_TOKENS = 16384  # rows x (padded length + new tokens): bounds the key/value cache memory
MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a separate forward pass


def facts_system(sentences: Sequence[str]) -> str:
    """The system message that puts facts in the prompt (the eval's `in-context`, the sleep stage's teacher)."""
    facts = "\n".join(f"- {c}" for c in sentences)
    return f"You are a helpful assistant. You know these facts:\n{facts}"


def facts_preamble(sentences: Sequence[str], text: str) -> str:
    """Raw text after the facts: how `in-context` and the teacher put facts before a completion."""
    return " ".join(sentences) + "\n" + text


def chat_prompt(lm: LoadedModel, question: str, system: str | None = None, history: list[dict] | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
    messages.append({"role": "user", "content": question})
    return lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(lm: LoadedModel, prompts: list[str], max_new_tokens: int = 24, batch_size: int = BATCH_SIZE) -> list[str]:
    """Greedy continuations of prompts as given (a rendered chat prompt already holds its special tokens)."""
    tok = lm.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    outs = generate_ids(lm, ids, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [tok.decode(o, skip_special_tokens=True) for o in outs]


def eos_ids(lm: LoadedModel) -> list[int]:
    ids = set()
    for value in (lm.tokenizer.eos_token_id, getattr(lm.model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def cache_kwarg(model: torch.nn.Module) -> str:
    # transformers 5 renamed `past_key_values` to `cache` (the old name warns, and goes in 5.40).
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The key/value cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def new_cache(model: torch.nn.Module):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    limit = min(len(r) for r in rows) - 1  # every row keeps at least one token of its own
    n = 0
    first = rows[0]
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def shared_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens a batch's rows share that are worth one separate forward (0: none)."""
    n = common_prefix(rows) if len(rows) > 1 else 0
    return n if n >= MIN_SHARED_PREFIX else 0


def _beginning(rows: Sequence[Sequence[int]]) -> tuple[int, list[bool]]:
    """The beginning that most of a batch's rows share, if worth one separate forward (`shared_length`),
    and which rows have it. Why not all rows: a batch that mixes chat prompts with raw text shares
    nothing, and every chat row would then run the chat template's system turn itself (the sleep's
    unrelated and canary prompts: 24 of their ~42 tokens each, until 2026-12-04)."""
    none = (0, [False] * len(rows))
    openings = Counter(tuple(r[:MIN_SHARED_PREFIX]) for r in rows if len(r) > MIN_SHARED_PREFIX)
    if not openings:
        return none
    opening, n = openings.most_common(1)[0]
    alike = [i for i, r in enumerate(rows) if len(r) > MIN_SHARED_PREFIX and tuple(r[:MIN_SHARED_PREFIX]) == opening]
    p = shared_length([rows[i] for i in alike]) if n > 1 else 0
    if not p:
        return none
    own = [False] * len(rows)
    for i in alike:
        own[i] = True
    return p, own


def encode_prefix(model: torch.nn.Module, prefix: Sequence[int], device, within=contextlib.nullcontext):
    """The key/value cache of `prefix` run once (one row; `batch_repeat_interleave` it for a batch).
    The forward runs inside `within()`, e.g. a context that stops it after the blocks a caller reads."""
    cache = new_cache(model)
    with within():
        model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, **{cache_kwarg(model): cache})
    return cache


def _generate_batch(lm: LoadedModel, rows: Sequence[Sequence[int]], max_new_tokens: int,
                    prefixes: dict | None = None, config=None, scored: bool = False):
    """One `generate` call (greedy, or as `config` says). `prefixes` keeps the key/value cache of
    shared prefixes between calls. With `scored`, also each answer's log-probabilities [len, vocab]
    (float32, CPU): the distributions generation computed at each answer token, before any sampling
    setting touched them."""
    from transformers import GenerationConfig

    model, tok = lm.model, lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos_ids(lm)[0]
    stop = eos_ids(lm)
    shared, own = _beginning(rows)
    first = rows[own.index(True)] if shared else rows[0]
    if shared and prefixes:
        # Reuse the previous group's prefix if the sharing rows start with it (a few tokens less
        # shared is cheaper than encoding a long prefix, e.g. facts in context, again).
        (kept,) = prefixes
        if len(kept) <= shared and tuple(first[: len(kept)]) == kept:
            shared = len(kept)
    # rows without the shared beginning see none of it (masked, their positions from 0, as left padding)
    rest = [list(r[shared:]) if o else list(r) for r, o in zip(rows, own)]
    width = max(len(x) for x in rest)
    ids, mask = [], []
    for r, o, x in zip(rows, own, rest):
        gap = width - len(x)
        ids.append((list(r[:shared]) if o else [pad] * shared) + [pad] * gap + x)
        mask.append([int(o)] * shared + [0] * gap + [1] * len(x))
    device = lm.device
    input_ids = torch.tensor(ids, device=device)
    attention_mask = torch.tensor(mask, device=device)
    if config is None:
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=stop
        )
    else:
        config = copy.copy(config)
        config.update(max_new_tokens=max_new_tokens, num_return_sequences=1, pad_token_id=pad, eos_token_id=stop)
    if scored:
        config = copy.copy(config)
        config.update(output_logits=True, return_dict_in_generate=True)
    kwargs = {}
    with torch.no_grad():
        if shared:
            key = cache_kwarg(model)
            prefix = tuple(first[:shared])
            if prefixes is not None and prefix in prefixes:
                cache = copy.deepcopy(prefixes[prefix])
            else:
                cache = encode_prefix(model, prefix, device)
                if prefixes is not None:
                    prefixes.clear()  # keep only the latest: consecutive groups share it
                    prefixes[prefix] = copy.deepcopy(cache)
            cache.batch_repeat_interleave(len(rows))
            kwargs[key] = cache
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, **kwargs)
    sequences = out.sequences if scored else out
    new = sequences[:, input_ids.shape[1] :].tolist()
    answers = []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        answers.append(row[:cut])
    if not scored:
        return answers
    # out.logits: one [rows, vocab] per step; row j's answer token t was chosen from step t
    return answers, [torch.log_softmax(torch.stack([step[j] for step in out.logits[: len(a)]]).float(), -1).cpu()
                     if a else torch.zeros(0, out.logits[0].shape[-1]) for j, a in enumerate(answers)]


def generate_ids(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = BATCH_SIZE,
    progress: bool = False,
    desc: str = "generating",
    config=None,
) -> list[list[int]]:
    """Greedy continuations (token ids, end-of-sequence stripped) of tokenized prompts; sampled ones
    when `config` (a transformers GenerationConfig) says so, one per prompt.

    Prompts are sorted by first token and length, so that a group mostly shares its prefix
    and pads little, then cut into groups of `batch_size`; each group is one `generate` call.
    """
    return _generate_all(lm, prompts, max_new_tokens, batch_size, progress, desc, config, False)


def generate_scored(lm: LoadedModel, prompts: Sequence[Sequence[int]], max_new_tokens: int = MAX_NEW_TOKENS,
                    batch_size: int = BATCH_SIZE) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy continuations as `generate_ids` gives them, and the log-probabilities [len, vocab] the
    model gave at each of their tokens: what a teacher-forced forward over prompt + answer would
    give (the sleep's references), without running that forward again."""
    out = _generate_all(lm, prompts, max_new_tokens, batch_size, False, "generating", None, True)
    return [a for a, _ in out], [lp for _, lp in out]


def _generate_all(lm, prompts, max_new_tokens, batch_size, progress, desc, config, scored) -> list:
    if not prompts:
        return []
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i][:1], len(prompts[i]), i))
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is not None:
            rows, longest = len(g) + 1, max(len(prompts[j]) for j in g + [i])
            if rows <= batch_size and rows * (longest + max_new_tokens) <= MAX_BATCH_TOKENS:
                g.append(i)
                continue
        groups.append([i])
    out: list = [None] * len(prompts)
    bar = progress_bar(total=len(prompts), desc=desc, leave=False, on=progress)
    prefixes: dict = {}
    for g in groups:
        got = _generate_batch(lm, [prompts[i] for i in g], max_new_tokens, prefixes, config, scored)
        for j, i in enumerate(g):
            out[i] = (got[0][j], got[1][j]) if scored else got[j]
        bar.update(len(g))
    bar.close()
    return out
