"""Spread a wanted change of the hidden state over several MLP layers (MEMIT's multi-layer insert).

For each edited layer in turn: read the keys with the earlier layers already updated, take the
remaining residual at the value layer, give this layer its share, solve, apply temporarily.
The model's weights are restored before returning.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..arch import get_module, spec_for
from ..model import LoadedModel
from ..progress import bar as progress_bar
from .delta import Delta
from .hooks import keys_and_outputs, keys_at_lookups
from .tokens import Row

# solve(layer, keys [d_in, n], resid [d_out, n]) -> (U, V)
Solver = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def mean_by_owner(keys: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """One key per value: the mean of its rows' keys, [n, d_in] (MEMIT's compute_ks)."""
    return torch.stack([keys[owner == v].mean(0) for v in range(n)])


def spread(lm: LoadedModel, layers: list[int], key_rows: list[Row], key_owner: list[int],
           value_rows: list[Row], values: torch.Tensor, solve: Solver, method: str,
           average_keys: bool, progress: bool = False, keep_rows: list[Row] = (),
           keep_weight: float = 1.0) -> Delta:
    """key_rows[j] gives a key for value key_owner[j]; value_rows[v] is where value v is measured.

    keep_rows: every lookup of these rows is a key whose output must NOT change (residual 0,
    weighted by keep_weight in the least squares); only for per-context solves.
    values: [n_values, d_model], the wanted hidden state at the last layer's output.
    average_keys: MEMIT's one key per value (mean over its contexts) instead of one per context.
    """
    model, spec = lm.model, spec_for(lm.model)
    z_layer = layers[-1]
    owner = torch.tensor(key_owner)
    delta = Delta(method=method)
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        for i, layer in enumerate(progress_bar(layers, desc=f"{method}: layers", on=progress)):
            keys, _ = keys_and_outputs(lm, key_rows, [layer])
            k = keys[layer]                                           # [n_keys, d_in]
            _, cur = keys_and_outputs(lm, value_rows, [layer], out_layer=z_layer)
            resid_v = (values - cur) / (len(layers) - i)              # [n_values, d_model]
            if average_keys:
                k = mean_by_owner(k, owner, len(values))
                resid = resid_v
            else:
                resid = resid_v[owner]
                if keep_rows:
                    kept = keys_at_lookups(lm, list(keep_rows), [layer])[layer] * keep_weight ** 0.5
                    k = torch.cat([k, kept])
                    resid = torch.cat([resid, resid.new_zeros(len(kept), resid.shape[1])])
            u, v = solve(layer, k.T, resid.T)
            used = u.abs().sum(0) > 0       # kept keys' columns of U are zero: drop them, dW is unchanged
            u, v = u[:, used], v[:, used]
            name = spec.mlp_out_weight(layer)
            delta.factors[name] = (u, v)
            w = get_module(model, spec.mlp_out_module(layer)).weight
            upd = (u @ v.T)
            upd = upd.T if spec.conv1d else upd
            originals.append((w, w.detach().clone()))
            with torch.no_grad():
                w.add_(upd.to(w.device, w.dtype))
    finally:
        with torch.no_grad():  # restore bit-exactly
            for w, orig in originals:
                w.copy_(orig)
    return delta
