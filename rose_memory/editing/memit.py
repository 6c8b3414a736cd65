"""MEMIT (Meng et al., 2023) and AlphaEdit (Fang et al., 2025), built as their reference code builds them.

Shared, as in both papers' code: one target value per request (compute_z at the last edited
layer over "{}" plus five model-sampled prefixes, a KL term on "{} is a"), keys averaged over
the same contexts (compute_ks), the residual spread over the layers. They differ only in the solve:
MEMIT weights by the key covariance, AlphaEdit projects onto its null space.
"""

from __future__ import annotations

import torch

from ..facts import EditRequest
from ..model import LoadedModel
from . import solvers
from .config import EditConfig
from .contexts import generic_prefixes
from .delta import Delta
from .hooks import keys_and_outputs
from .spread import mean_by_owner, spread
from .stats import moments_for, nullspace_projectors_for
from .targets import TargetCache, optimize_values
from .tokens import Row, build_row, split_prompt


def _row(lm, ctx: str, req: EditRequest, group: int, with_target: bool) -> Row:
    before, after = split_prompt(req.prompt)
    pieces = [("text", ctx + before), ("subject", req.subject), ("text", after)]
    if with_target:
        pieces.append(("scored", " " + req.target))
    row = build_row(lm, pieces)
    row.group = group
    return row


def _contexts(lm: LoadedModel, cfg: EditConfig) -> list[str]:
    return [""] + generic_prefixes(lm, cfg.n_generic_contexts, cfg.generic_context_tokens, cfg.seed)


def memit_targets(lm: LoadedModel, reqs: list[EditRequest], cfg: EditConfig, cache: TargetCache | None,
                  progress: bool = False) -> torch.Tensor:
    """One value per request at layers[-1]: [n_requests, d_model] (the hidden state wanted there)."""
    z_layer = cfg.layers[-1]
    key = TargetCache.key("memit-z", lm.cache_id, [r.model_dump() for r in reqs], z_layer, cfg.v_steps, cfg.v_lr,
                          cfg.clamp_norm_factor, cfg.v_weight_decay, cfg.kl_factor, cfg.n_generic_contexts, cfg.seed, cfg.value_bf16)
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    ctxs = _contexts(lm, cfg)
    value_rows = [_row(lm, "", r, i, False) for i, r in enumerate(reqs)]
    _, init = keys_and_outputs(lm, value_rows, [z_layer], out_layer=z_layer)
    values = []
    # MEMIT optimises each request's value on its own (compute_z per request); keep that.
    for i, r in enumerate(reqs):
        rows = [_row(lm, c, r, 0, True) for c in ctxs]
        kl = [_row(lm, "", EditRequest(subject=r.subject, prompt="{} is a", target="x"), 0, False)]
        d, _ = optimize_values(lm, z_layer, rows, kl, init[i:i + 1], torch.zeros_like(init[i:i + 1]),
                               cfg.v_steps, cfg.v_lr, cfg.clamp_norm_factor, cfg.v_weight_decay,
                               cfg.kl_factor, stop_prob=0.95, batched=cfg.batched, upper_only=cfg.upper_only,
                               bf16=cfg.value_bf16)
        values.append(init[i] + d[0])
    out = torch.stack(values)
    if cache is not None:
        cache.put(key, out)
    return out


def _key_rows(lm: LoadedModel, reqs: list[EditRequest], cfg: EditConfig) -> tuple[list[Row], list[int]]:
    """compute_ks: per request, the mean over context types (plain; the sampled prefixes)."""
    gens = generic_prefixes(lm, cfg.n_generic_contexts, cfg.generic_context_tokens, cfg.seed)
    rows, owner = [], []
    for i, r in enumerate(reqs):
        # The plain context repeated len(gens) times gives it the weight of one context type.
        for c in [""] * len(gens) + gens:
            rows.append(_row(lm, c, r, i, False))
            owner.append(i)
    return rows, owner


def edit_memit(lm: LoadedModel, reqs: list[EditRequest], cfg: EditConfig, cache: TargetCache | None,
               progress: bool = False) -> Delta:
    values = memit_targets(lm, reqs, cfg, cache, progress)
    covs = moments_for(lm, cfg, progress)
    key_rows, owner = _key_rows(lm, reqs, cfg)
    value_rows = [_row(lm, "", r, i, False) for i, r in enumerate(reqs)]

    def solve(layer, k, r):
        return solvers.covariance(k, r, covs[layer], cfg.mom2_update_weight)

    return spread(lm, cfg.layers, key_rows, owner, value_rows, values, solve, "memit", average_keys=True,
                  progress=progress)


def edit_alphaedit(lm: LoadedModel, reqs: list[EditRequest], cfg: EditConfig, cache: TargetCache | None,
                   progress: bool = False) -> Delta:
    values = memit_targets(lm, reqs, cfg, cache, progress)
    projs = nullspace_projectors_for(lm, cfg, progress)
    key_rows, owner = _key_rows(lm, reqs, cfg)
    value_rows = [_row(lm, "", r, i, False) for i, r in enumerate(reqs)]
    prev = cache.preserved if (cache is not None and cache.sequential) else {}

    def solve(layer, k, r):
        return solvers.nullspace(k, r, projs[layer], prev.get(layer), cfg.alphaedit_l2)

    delta = spread(lm, cfg.layers, key_rows, owner, value_rows, values, solve, "alphaedit", average_keys=True,
                   progress=progress)
    # AlphaEdit keeps the keys of past edits (cache_c) so later edits leave them alone: the
    # Delta carries its keys (a memory sums those of its live edits), and a sequential cache
    # accumulates them.
    keys, _ = keys_and_outputs(lm, key_rows, cfg.layers)
    delta.keys = {layer: mean_by_owner(k, torch.tensor(owner), len(reqs)).float().cpu() for layer, k in keys.items()}
    if cache is not None and cache.sequential:
        for layer, km in delta.keys.items():
            prev[layer] = prev.get(layer, 0) + km.T @ km
    return delta
