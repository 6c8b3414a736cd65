"""The student's forward from a cached block input.

No factor sits below the first trained block, so what the blocks below it compute for a
training sequence never changes during a sleep: it is computed once per sequence, and each
step runs only the blocks from there up (on the embedded model with the default layers, 21 of
30 blocks forward and backward). Models whose forward does more to `inputs_embeds` than pass
them to the blocks (GPT-2 adds position embeddings, Gemma scales them) would get wrong
states, so the shortcut is checked against the full forward on the first batch and dropped
where the two differ.

Rows that begin alike (the chat template's system turn, about 25 tokens of a 40-60-token
training row) share that beginning once per step as well: it runs as one row through the upper
blocks, factors included, and its key/value cache serves every such row of the batch (gradients
flow back through it), so a step computes about a third fewer positions. Checked against the
plain cached forward the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from ..arch import get_module, spec_for
from ..generate import MIN_SHARED_PREFIX, cache_kwarg, common_prefix, encode_prefix, new_cache
from ..model import LoadedModel
from .teacher import body_and_pad, prefixed_batch, right_padded

Hidden = Callable[[Sequence], torch.Tensor]  # examples (with .prompt, .answer) -> last hidden states [n, len, d]


def block_of(model: torch.nn.Module, path: str) -> int:
    """The block index in a module path such as model.layers.9.self_attn.v_proj."""
    prefix = spec_for(model).layers + "."
    return int(path[len(prefix):].split(".")[0])


def _tokens(e) -> list[int]:
    return list(e.prompt) + list(e.answer)


class _Stop(Exception):
    """Raised once block `first`'s input is taken: the blocks above it need not run."""


def full_forward(lm: LoadedModel) -> Hidden:
    body, pad = body_and_pad(lm)

    def hidden(examples):
        ids, mask = right_padded([_tokens(e) for e in examples], pad)
        return body(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).last_hidden_state

    return hidden


def cached_forward(lm: LoadedModel, first: int, examples: Sequence, check: Sequence, chunk: int = 16) -> tuple[Hidden, bool]:
    """A forward that starts at block `first` from each example's cached input to it, and whether it
    is used: `(full_forward(lm), False)` when `first` is 0 or the shortcut does not reproduce the full
    forward on `check` (weights as they are now, before any factor moves)."""
    full = full_forward(lm)
    if first <= 0:
        return full, False
    body, pad = body_and_pad(lm)
    parent_path, name = spec_for(lm.model).layers.rsplit(".", 1)
    parent = get_module(lm.model, parent_path)
    blocks = getattr(parent, name)
    cache: dict[int, torch.Tensor] = {}
    grabbed: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        grabbed.append((args[0] if args else kwargs["hidden_states"]).detach())
        raise _Stop

    rows = list({id(e): e for e in list(examples) + list(check)}.values())
    rows.sort(key=_tokens)  # a chunk then mostly shares its beginning: that runs once, its key/value cache serves the chunk

    def encode(model, tokens, device):  # the beginning's cache up to block `first` (the hook stops it there)
        return encode_prefix(model, tokens, device, within=lambda: contextlib.suppress(_Stop))

    hook = blocks[first].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                tokens = [_tokens(e) for e in part]
                grabbed.clear()
                ids, mask, kwargs, shared = prefixed_batch(body, tokens, [list(e.prompt) for e in part], pad, lm.device, encode)
                with contextlib.suppress(_Stop):
                    body(input_ids=ids, attention_mask=mask, **kwargs)
                for i, e in enumerate(part):
                    x = grabbed[-1][i, : len(tokens[i]) - shared]
                    cache[id(e)] = torch.cat([grabbed[0][0], x]) if shared else x.clone()
    finally:
        hook.remove()
    upper = torch.nn.ModuleList(list(blocks)[first:])
    # the upper blocks run as a model of their own: their attention layers number their cache entries from 0
    numbered = [m for blk in upper for m in blk.modules() if isinstance(getattr(m, "layer_idx", None), int)]

    @contextlib.contextmanager
    def upper_only():
        setattr(parent, name, upper)  # the blocks below `first` are skipped for this call only
        for m in numbered:
            m.layer_idx -= first
        try:
            yield
        finally:
            for m in numbered:
                m.layer_idx += first
            setattr(parent, name, blocks)

    def padded(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = [len(x) for x in states]
        width = max(lengths)
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        return torch.stack([torch.nn.functional.pad(x, (0, 0, 0, width - len(x))) for x in states]), mask.to(lm.device)

    def hidden(batch):
        states, mask = padded([cache[id(e)] for e in batch])
        with upper_only():
            return body(inputs_embeds=states, attention_mask=mask).last_hidden_state

    def close(a: Hidden, b: Hidden, batch) -> bool:
        with torch.no_grad():
            want, got = a(batch), b(batch)
        _, mask = right_padded([_tokens(e) for e in batch], pad)
        real = mask.bool().to(want.device)
        return want.shape == got.shape and torch.allclose(got[real], want[real], rtol=1e-3,
                                                         atol=1e-4 * float(want[real].abs().max()))

    if not close(full, hidden, check):
        return full, False
    shared = _shared_beginning(rows, check[0], cache, hidden, upper_only, padded, body)
    return (shared, True) if shared is not None and close(hidden, shared, check) else (hidden, True)


def _shared_beginning(rows: Sequence, first_row, cache: dict, plain: Hidden, upper_only, padded, body) -> Hidden | None:
    """`plain` (the cached forward) with the rows that start like `first_row` (the beginning all the
    rows that open with its first tokens share) running that beginning once: one row through the
    upper blocks, its key/value cache repeated for the batch. None when too short a beginning is shared."""
    opening = list(first_row.prompt[:MIN_SHARED_PREFIX])
    alike = [list(e.prompt) for e in rows if list(e.prompt[:MIN_SHARED_PREFIX]) == opening]
    p = common_prefix(alike) if len(alike) > 1 else 0
    if p < MIN_SHARED_PREFIX:
        return None
    prefix = _tokens(first_row)[:p]
    start = cache[id(first_row)][:p][None]  # [1, p, d]: the block input there is the same in every such row
    key = cache_kwarg(body)

    def hidden(batch):
        own = [len(_tokens(e)) > p and _tokens(e)[:p] == prefix for e in batch]
        if sum(own) < 2:
            return plain(batch)
        # one forward for every row: the others see none of the shared beginning and count their positions from 0
        states, mask = padded([cache[id(e)][p:] if o else cache[id(e)] for e, o in zip(batch, own)])
        seen = torch.tensor(own, device=mask.device)
        positions = seen[:, None].long() * p + torch.arange(states.shape[1], device=mask.device)[None, :]
        mask = torch.cat([seen[:, None].expand(-1, p).to(mask.dtype), mask], 1)
        kv = new_cache(body)
        with upper_only():
            head = body(inputs_embeds=start, attention_mask=torch.ones_like(mask[:1, :p]), use_cache=True,
                        **{key: kv}).last_hidden_state[0]
            kv.batch_repeat_interleave(len(batch))
            tail = body(inputs_embeds=states, attention_mask=mask, position_ids=positions, use_cache=True,
                        **{key: kv}).last_hidden_state
        rows = [torch.cat([head, t]) if o else t for t, o in zip(tail, own)]
        width = max(len(r) for r in rows)
        return torch.stack([torch.nn.functional.pad(r, (0, 0, 0, width - len(r))) for r in rows])

    hidden.shared = p  # how many leading tokens the rows that begin alike run once (tests read it)
    return hidden

