"""Forward hooks: read an MLP output projection's input (the key), add a vector to a block's output."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..arch import get_module, spec_for
from ..model import LoadedModel
from .tokens import Row, batch


def out_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def add_at(h: torch.Tensor, positions: list[tuple[int, int, int]], vectors: torch.Tensor) -> torch.Tensor:
    """h [n, T, d] with vectors[v] added at (row, pos) for each (row, pos, v) in positions."""
    rows = torch.tensor([p[0] for p in positions])
    cols = torch.tensor([p[1] for p in positions])
    which = torch.tensor([p[2] for p in positions])
    add = torch.zeros_like(h).index_put((rows, cols), vectors[which].to(h.dtype), accumulate=True)
    return h + add


class _Stop(Exception):
    """Raised by a hook once the last block a reading needs has run."""


@contextmanager
def stop_after_block(model, layer: int):
    """Cut the forward pass after block `layer`: keys of early layers need none of the blocks above.

    The forward inside the `with` ends there; the exception is swallowed at the block's end.
    """
    def hook(_m, _i, _o):
        raise _Stop

    handle = get_module(model, spec_for(model).block(layer)).register_forward_hook(hook)
    try:
        yield
    except _Stop:
        pass
    finally:
        handle.remove()


@contextmanager
def add_at_block(model, layer: int, positions: list[tuple[int, int, int]], vectors: torch.Tensor):
    """Add vectors[v] to block `layer`'s output hidden state at (row, position) for (row, pos, v)."""
    block = get_module(model, spec_for(model).block(layer))

    def hook(_m, _inp, output):
        h2 = add_at(out_tensor(output), positions, vectors)
        return (h2,) + tuple(output[1:]) if isinstance(output, tuple) else h2

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def keys_and_outputs(lm: LoadedModel, rows: list[Row], layers: list[int], out_layer: int | None = None,
                     chunk: int = 64) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Keys at each row's LAST lookup: MLP-out inputs per layer, {layer: [n, d_in]}, float32.

    With `out_layer`, also the block output hidden state there, [n, d_model].
    """
    model, spec = lm.model, spec_for(lm.model)
    keys: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    outs: list[torch.Tensor] = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        idx = torch.tensor([r.lookups[-1] for r in part])
        ar = torch.arange(len(part))
        handles = []
        for l in layers:
            mod = get_module(model, spec.mlp_out_module(l))

            def pre(_m, args, l=l):
                keys[l].append(args[0][ar, idx].detach().float().cpu())
            handles.append(mod.register_forward_pre_hook(pre))
        if out_layer is not None:
            def post(_m, _i, output):
                outs.append(out_tensor(output)[ar, idx].detach().float().cpu())
            handles.append(get_module(model, spec.block(out_layer)).register_forward_hook(post))
        ids, mask = batch(part, lm.tokenizer.pad_token_id, lm.device)
        try:
            with torch.no_grad(), stop_after_block(model, max([*layers, out_layer or 0])):
                base = getattr(model, model.base_model_prefix, None)
                (base if base is not None else model)(input_ids=ids, attention_mask=mask)
        finally:
            for h in handles:
                h.remove()
    return {l: torch.cat(v) for l, v in keys.items()}, (torch.cat(outs) if outs else None)


def keys_at_lookups(lm: LoadedModel, rows: list[Row], layers: list[int]) -> dict[int, torch.Tensor]:
    """Keys at EVERY lookup position of each row (not only the last): {layer: [n_lookups, d_in]}."""
    model, spec = lm.model, spec_for(lm.model)
    keys: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    r_idx = torch.tensor([i for i, r in enumerate(rows) for _ in r.lookups])
    p_idx = torch.tensor([p for r in rows for p in r.lookups])
    handles = []
    for l in layers:
        def pre(_m, args, l=l):
            keys[l].append(args[0][r_idx, p_idx].detach().float().cpu())
        handles.append(get_module(model, spec.mlp_out_module(l)).register_forward_pre_hook(pre))
    ids, mask = batch(rows, lm.tokenizer.pad_token_id, lm.device)
    try:
        with torch.no_grad(), stop_after_block(model, max(layers)):
            getattr(model, model.base_model_prefix)(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    return {l: torch.cat(v) for l, v in keys.items()}
