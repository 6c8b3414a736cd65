"""The student's forward from a cached block input.

No factor sits below the first trained block, so what the blocks below it compute for a
training sequence never changes during a sleep: it is computed once per sequence, and each
step runs only the blocks from there up (on the embedded model with the default layers, 21 of
30 blocks forward and backward). Models whose forward does more to `inputs_embeds` than pass
them to the blocks (GPT-2 adds position embeddings, Gemma scales them) would get wrong
states, so the shortcut is checked against the full forward on the first batch and dropped
where the two differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..arch import get_module, spec_for
from ..model import LoadedModel
from .teacher import body_and_pad, right_padded

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
    hook = blocks[first].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                grabbed.clear()
                ids, mask = right_padded([_tokens(e) for e in part], pad)
                try:
                    body(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
                except _Stop:
                    pass
                for i, e in enumerate(part):
                    cache[id(e)] = grabbed[0][i, : len(_tokens(e))].clone()
    finally:
        hook.remove()
    upper = torch.nn.ModuleList(list(blocks)[first:])

    def hidden(batch):
        lengths = [len(cache[id(e)]) for e in batch]
        width = max(lengths)
        states = torch.stack([torch.nn.functional.pad(cache[id(e)], (0, 0, 0, width - n)) for e, n in zip(batch, lengths)])
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
        setattr(parent, name, upper)  # the blocks below `first` are skipped for this call only
        try:
            return body(inputs_embeds=states, attention_mask=mask.to(lm.device)).last_hidden_state
        finally:
            setattr(parent, name, blocks)

    with torch.no_grad():
        want, got = full(check), hidden(check)
        _, mask = right_padded([_tokens(e) for e in check], pad)
        real = mask.bool().to(want.device)
        ok = want.shape == got.shape and torch.allclose(got[real], want[real], rtol=1e-3,
                                                        atol=1e-4 * float(want[real].abs().max()))
    return (hidden, True) if ok else (full, False)
