"""Target values: the residual-stream vector at the subject's last token that makes the model say the target.

One batched optimisation (MEMIT's compute_z): a free vector `delta` per value is added to
block `layer`'s output at the lookup positions of its rows; all rows go through the model in
one padded batch per step; logits are computed only at scored positions.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
import hashlib
import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import faults
from ..arch import get_module, spec_for
from ..generate import cache_kwarg, output_cache
from ..model import LoadedModel
from .hooks import add_at, add_at_block, out_tensor
from .tokens import Row


@dataclass
class TargetCache:
    """Computed target values shared between methods/ablations of one run (keyed by content)."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    hits: int = 0
    # AlphaEdit's K K^T of earlier edits per layer; the caller keeps it only for sequential runs.
    sequential: bool = False
    preserved: dict[int, torch.Tensor] = field(default_factory=dict)

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str):
        if key in self.values:
            self.hits += 1
            return self.values[key].clone()
        return None

    def put(self, key: str, value: torch.Tensor) -> None:
        self.values[key] = value.detach().clone()


def _row_nll(logits: torch.Tensor, targets: torch.Tensor, row_of: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean NLL per row over its scored tokens: [n_rows]."""
    nll = F.cross_entropy(logits, targets, reduction="none")
    total = torch.zeros(n_rows).index_add(0, row_of, nll)
    count = torch.zeros(n_rows).index_add(0, row_of, torch.ones_like(nll))
    return total / count.clamp(min=1)


def split_batch(rows: list[Row], pad_id: int, device):
    """Split each row at its first edit position: a left-padded prefix batch and a right-padded suffix batch.

    Nothing before the subject's last token depends on the value, so the prefix runs once
    (no grad) and only the suffix is recomputed at each optimisation step.
    """
    cut = [r.lookups[0] for r in rows]
    p_len = max(cut)
    s_len = max(len(r.ids) - c for r, c in zip(rows, cut))
    n = len(rows)
    pre_ids = torch.full((n, max(p_len, 1)), pad_id, dtype=torch.long)
    pre_mask = torch.zeros((n, max(p_len, 1)), dtype=torch.long)
    suf_ids = torch.full((n, s_len), pad_id, dtype=torch.long)
    suf_mask = torch.zeros((n, s_len), dtype=torch.long)
    suf_pos = torch.zeros((n, s_len), dtype=torch.long)
    for i, (r, c) in enumerate(zip(rows, cut)):
        if c:
            pre_ids[i, p_len - c:] = torch.tensor(r.ids[:c])
            pre_mask[i, p_len - c:] = 1
        tail = r.ids[c:]
        suf_ids[i, : len(tail)] = torch.tensor(tail)
        suf_mask[i, : len(tail)] = 1
        suf_pos[i] = torch.arange(c, c + s_len)
    pre_pos = (pre_mask.cumsum(-1) - 1).clamp(min=0)
    return [t.to(device) for t in (pre_ids, pre_mask, pre_pos, suf_ids, suf_mask, suf_pos)], cut, p_len > 0


def _buckets(rows: list[Row], kl_rows: list[Row], max_waste: float = 0.3) -> list[list[int]]:
    """Indices into rows + kl_rows, grouped by suffix length so padding stays under max_waste."""
    all_rows = rows + kl_rows
    lens = sorted(range(len(all_rows)), key=lambda i: len(all_rows[i].ids) - all_rows[i].lookups[0])
    out: list[list[int]] = []
    for i in lens:
        n = len(all_rows[i].ids) - all_rows[i].lookups[0]
        if out:
            cur = out[-1]
            used = sum(len(all_rows[j].ids) - all_rows[j].lookups[0] for j in cur) + n
            if used >= (1 - max_waste) * n * (len(cur) + 1):
                cur.append(i)
                continue
        out.append([i])
    return out


def _prepare(lm: LoadedModel, idx: list[int], rows: list[Row], kl_rows: list[Row]) -> dict:
    """One bucket: its prefix KV cache (computed once) and where its edits, scores and KL sit."""
    all_rows = rows + kl_rows
    part = [all_rows[i] for i in idx]
    base = getattr(lm.model, lm.model.base_model_prefix)
    (pre_ids, pre_mask, pre_pos, suf_ids, suf_mask, suf_pos), cut, has_prefix = split_batch(
        part, lm.tokenizer.pad_token_id, lm.device)
    cache = None
    if has_prefix:
        with torch.no_grad():
            cache = output_cache(base(input_ids=pre_ids, attention_mask=pre_mask, position_ids=pre_pos,
                                      use_cache=True))
    n_main = len(rows)
    sc = [(loc, i, p - cut[loc]) for loc, i in enumerate(idx) if i < n_main for p in all_rows[i].scored]
    kl = [(loc, i - n_main, all_rows[i].lookups[-1] - cut[loc]) for loc, i in enumerate(idx) if i >= n_main]
    sc_local = torch.tensor([a for a, _, _ in sc], dtype=torch.long)
    sc_pos = torch.tensor([c for _, _, c in sc], dtype=torch.long)
    return {
        "cache": cache,
        "mask": torch.cat([pre_mask, suf_mask], 1) if has_prefix else suf_mask,
        "ids": suf_ids, "pos": suf_pos,
        "edits": [(loc, p - cut[loc], r.group) for loc, r in enumerate(part) for p in r.lookups],
        "sc_local": sc_local, "sc_pos": sc_pos,
        "sc_row": torch.tensor([i for _, i, _ in sc], dtype=torch.long),
        "sc_tgt": suf_ids[sc_local, sc_pos + 1].cpu() if sc else torch.zeros(0, dtype=torch.long),
        "kl_local": torch.tensor([a for a, _, _ in kl], dtype=torch.long),
        "kl_which": torch.tensor([w for _, w, _ in kl], dtype=torch.long),
        "kl_pos": torch.tensor([c for _, _, c in kl], dtype=torch.long),
    }


def _is_cache(x) -> bool:
    return hasattr(x, "get_seq_length")


def _capture_upper(lm: LoadedModel, layer: int, b: dict) -> None:
    """Record what each block above `layer` is called with, so that a step replays only those blocks.

    Nothing below the value layer depends on the value, so each step can start from the
    recorded hidden state after block `layer`. The replay is compared once with the full
    forward; if it differs (an architecture that does something between blocks), the bucket
    keeps the full forward.
    """
    model = lm.model
    spec = spec_for(model)
    n = model.config.num_hidden_layers
    calls: dict[int, tuple] = {}
    handles = []
    for i in range(layer + 1, n):
        def pre(_m, args, kwargs, i=i):
            calls[i] = (args[1:], dict(kwargs))
        handles.append(get_module(model, spec.block(i)).register_forward_pre_hook(pre, with_kwargs=True))
    h_z: list[torch.Tensor] = []
    handles.append(get_module(model, spec.block(layer)).register_forward_hook(
        lambda _m, _i, out: h_z.append(out_tensor(out).detach())))
    try:
        with torch.no_grad():
            full = _suffix_hidden_full(lm, b, None)
    finally:
        for h in handles:
            h.remove()
    if len(calls) != n - layer - 1 or len(h_z) != 1:
        return
    b["upper"] = {"calls": calls, "h": h_z[0], "norm": get_module(model, spec.final_norm),
                  "block": {i: get_module(model, spec.block(i)) for i in calls}}
    with torch.no_grad():
        replay = _suffix_hidden_upper(b, layer, n, None)
    mask = b["mask"][:, -b["ids"].shape[1]:].bool()          # real (unpadded) suffix tokens
    if not torch.allclose(replay[mask], full[mask], atol=1e-4, rtol=1e-3):
        del b["upper"]


def _suffix_hidden_upper(b: dict, layer: int, n_layers: int, delta: torch.Tensor | None) -> torch.Tensor:
    up = b["upper"]
    h = up["h"]
    if delta is not None and b["edits"]:
        h = add_at(h, b["edits"], delta)
    cache = copy.deepcopy(b["cache"]) if b["cache"] is not None else None
    for i in range(layer + 1, n_layers):
        args, kwargs = up["calls"][i]
        args = tuple(cache if _is_cache(a) else a for a in args)
        kwargs = {k: (cache if _is_cache(v) else v) for k, v in kwargs.items()}
        h = out_tensor(up["block"][i](h, *args, **kwargs))
    return up["norm"](h)


def _suffix_hidden_full(lm: LoadedModel, b: dict, delta: torch.Tensor | None, layer: int = 0) -> torch.Tensor:
    """Final hidden states of a bucket's suffixes (full forward), value deltas added at block `layer`."""
    model = lm.model
    base = getattr(model, model.base_model_prefix)
    kwargs = {"attention_mask": b["mask"]}
    if b["cache"] is not None:
        # A fresh copy: the forward appends the suffix to the cache it is given.
        kwargs[cache_kwarg(base)] = copy.deepcopy(b["cache"])
    with add_at_block(model, layer, b["edits"], delta) if delta is not None else nullcontext():
        return base(input_ids=b["ids"], position_ids=b["pos"], use_cache=b["cache"] is not None,
                    **kwargs).last_hidden_state


def _suffix_hidden(lm: LoadedModel, layer: int, b: dict, delta: torch.Tensor) -> torch.Tensor:
    if "upper" in b:
        return _suffix_hidden_upper(b, layer, lm.model.config.num_hidden_layers, delta)
    return _suffix_hidden_full(lm, b, delta, layer)


def bf16_matmuls(device: torch.device) -> bool:
    """Whether bfloat16 matmuls are native here (a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def optimize_values(
    lm: LoadedModel,
    layer: int,
    rows: list[Row],
    kl_rows: list[Row],
    init: torch.Tensor,
    start: torch.Tensor,
    steps: int,
    lr: float,
    clamp_norm_factor: float,
    weight_decay: float,
    kl_factor: float,
    stop_prob: float,
    anchor: torch.Tensor | None = None,
    anchor_weight: float = 0.0,
    kl_ref: torch.Tensor | None = None,
    batched: bool = True,
    upper_only: bool = True,
    noise: float = 0.0,
    prepared: dict | None = None,
    bf16: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Optimise deltas [n_values, d] (row.group = value index), starting from `start`.

    `init` [n_values, d] is the unedited hidden state, used for the norm scale and the clamp.
    Returns (deltas, info with per-step losses and the final per-row target probabilities).
    `prepared`: a dict the caller keeps between calls; a call with the very same row objects
    reuses the buckets (prefix caches, recorded block inputs) of the previous call.
    `bf16`: each step's blocks run under bfloat16 autocast, where the hardware has native bf16
    matmuls (else ignored); buckets are prepared and checked in the model's dtype, the delta,
    the output head, losses and the optimiser stay float32.
    """
    head = lm.model.get_output_embeddings()
    amp = (torch.autocast(device_type=lm.device.type, dtype=torch.bfloat16)
           if bf16 and bf16_matmuls(lm.device) else nullcontext())
    # The same rows again (RoSE's joint refinement after its last stage): reuse their prepared buckets.
    reuse_key = (layer, batched, upper_only, tuple(map(id, rows)), tuple(map(id, kl_rows)))
    if prepared is not None and prepared.get("key") == reuse_key:
        buckets = prepared["buckets"]
    else:
        groups = _buckets(rows, kl_rows) if batched else [[i] for i in range(len(rows) + len(kl_rows))]
        buckets = [_prepare(lm, b, rows, kl_rows) for b in groups]
        if upper_only:
            for b in buckets:
                _capture_upper(lm, layer, b)
        if prepared is not None:
            prepared.update(key=reuse_key, buckets=buckets)
    weights = torch.tensor([r.weight for r in rows])
    init = init.float()
    scale = init.norm(dim=-1)                                   # [n_values]
    delta = start.clone().float().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    info: dict = {"losses": [], "steps": 0}
    probs = torch.zeros(len(rows))
    for step in range(steps):
        faults.point("edit:value_step")  # a kill in the middle of computing an edit (tests/test_crash.py)
        opt.zero_grad()
        nll_rows = torch.zeros(len(rows))
        kl_terms = []
        used = delta
        if noise > 0:  # a random nudge of the value each step: favours a flat minimum (prompt drift)
            used = delta + noise * scale[:, None] * torch.randn_like(delta) / delta.shape[-1] ** 0.5
        for b in buckets:
            with amp:
                hidden = _suffix_hidden(lm, layer, b, used.to(lm.device))
            hidden = hidden.to(head.weight.dtype)
            if len(b["sc_row"]):
                logits = head(hidden[b["sc_local"], b["sc_pos"]]).float().cpu()
                nll_rows = nll_rows + _row_nll(logits, b["sc_tgt"], b["sc_row"], len(rows))
            if len(b["kl_local"]):
                kl_terms.append((b["kl_which"], F.log_softmax(head(hidden[b["kl_local"], b["kl_pos"]]).float().cpu(), -1)))
        probs = torch.exp(-nll_rows.detach())
        loss = (nll_rows * weights).sum() / weights.sum()
        if kl_terms:
            order = torch.cat([w for w, _ in kl_terms]).argsort()
            kl_logp = torch.cat([lp for _, lp in kl_terms])[order]
            if kl_ref is None:
                kl_ref = kl_logp.detach().clone()
            loss = loss + kl_factor * F.kl_div(kl_ref, kl_logp, log_target=True, reduction="batchmean")
        loss = loss + weight_decay * (delta.norm(dim=-1) / scale**2).sum()
        if anchor is not None and anchor_weight > 0:
            loss = loss + anchor_weight * (((delta - anchor) ** 2).sum(-1) / scale**2).sum()
        info["losses"].append(round(loss.item(), 4))
        info["steps"] = step + 1
        if float(probs.min()) >= stop_prob:
            break
        loss.backward()
        opt.step()
        with torch.no_grad():  # project into the L2 ball, as MEMIT does
            max_norm = clamp_norm_factor * scale
            norms = delta.norm(dim=-1)
            over = norms > max_norm
            delta[over] *= (max_norm[over] / norms[over]).unsqueeze(-1)
    info["probs"] = [round(float(p), 3) for p in probs]
    info["kl_ref"] = kl_ref
    return delta.detach(), info
