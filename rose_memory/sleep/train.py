"""The student: the current weights plus low-rank factors on chosen linear layers, trained to match
the teacher on the kept answers and the model before the sleep on unrelated prompts (KL both)."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from ..arch import get_module, num_layers, spec_for
from ..editing.delta import Delta
from ..model import LoadedModel
from .config import SleepConfig
from .teacher import Example


def target_modules(model: torch.nn.Module, cfg: SleepConfig) -> list[str]:
    """Module paths that get factors: per chosen block, its MLP's linear layers (or only the output projection)."""
    spec = spec_for(model)
    n = num_layers(model)
    layers = cfg.layers if cfg.layers is not None else list(range(n // 3, 2 * n // 3))
    out = []
    for i in layers:
        mlp_out = spec.mlp_out_module(i)
        parent = mlp_out.rsplit(".", 1)[0]
        if cfg.modules == "out" or parent == spec.block(i):  # opt keeps its MLP in the block itself
            out.append(mlp_out)
            continue
        for name, mod in get_module(model, parent).named_children():
            if hasattr(mod, "weight") and getattr(mod.weight, "ndim", 0) == 2:
                out.append(f"{parent}.{name}")
    return out


class _Factors(torch.nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int, gen: torch.Generator, a: torch.Tensor | None = None):
        super().__init__()
        if a is None:
            self.a = torch.nn.Parameter(torch.randn(rank, d_in, generator=gen) / d_in ** 0.5)  # [r, d_in]
        else:
            self.register_buffer("a", a)                                                        # fixed [r, d_in]
        self.b = torch.nn.Parameter(torch.zeros(d_out, a.shape[0] if a is not None else rank))  # [d_out, r]

    def forward(self, x):
        return (x @ self.a.T) @ self.b.T


def _batch(examples: list[Example], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    rows = [e.prompt + e.answer for e in examples]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    spans = [(len(e.prompt) - 1, len(e.answer)) for e in examples]  # positions that predict the answer
    return ids.to(device), mask.to(device), spans


def _kl(body, head, examples: list[Example], pad: int, device, per_sequence: bool = False,
        margin: float = 0.0) -> torch.Tensor:
    """KL(target || student) at every answer token: the mean over tokens, or (per_sequence) the
    sum over each answer's tokens averaged over answers, so that the one token that names the
    object is not outweighed by the restated question around it. With `margin`, plus a hinge
    that keeps each answer token ahead of every other token by that many nats: locality is
    judged on greedy tokens, and a KL that is small on average still flips the tokens that
    were only narrowly ahead."""
    ids, mask, spans = _batch(examples, pad, device)
    h = body(input_ids=ids, attention_mask=mask).last_hidden_state
    sel = torch.cat([h[i, s: s + n] for i, (s, n) in enumerate(spans)])            # [tokens, d]
    student = torch.log_softmax(head(sel).float(), -1)
    teacher = torch.cat([e.target_logprobs for e in examples]).to(device)          # [tokens, vocab]
    kl = (teacher.exp() * (teacher - student)).sum(-1)                             # [tokens]
    loss = kl.sum() / len(examples) if per_sequence else kl.mean()
    if margin > 0:
        target = torch.tensor([t for e in examples for t in e.answer], device=device)
        own = student.gather(1, target[:, None])[:, 0]
        rival = student.scatter(1, target[:, None], float("-inf")).max(-1).values
        loss = loss + torch.relu(margin - (own - rival)).mean()
    return loss


def _inputs(model, paths: list[str], examples: list[Example], prompt_only: bool, pad: int, device) -> dict[str, torch.Tensor]:
    """Each module's input vectors [n, d_in] over the examples' tokens (prompt tokens only if asked)."""
    out: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    keep = None

    def grab(p, inputs):
        out[p].append(inputs[0].detach()[keep].float().cpu())

    hooks = [get_module(model, p).register_forward_hook(lambda m, i, o, p=p: grab(p, i)) for p in paths]
    try:
        with torch.no_grad():
            for start in range(0, len(examples), 16):
                chunk = examples[start:start + 16]
                ids, mask, _ = _batch(chunk, pad, device)
                keep = mask.bool()
                if prompt_only:
                    for i, e in enumerate(chunk):
                        keep[i, len(e.prompt):] = False
                model(input_ids=ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    return {p: torch.cat(v) for p, v in out.items()}


def subject_directions(model, paths: list[str], facts: list[Example], unrelated: list[Example], cfg: SleepConfig,
                       pad: int, device) -> dict[str, torch.Tensor]:
    """Per module, `rank` input directions [r, d_in]: the fact prompts' inputs with every direction
    that carries `null_energy` of the unrelated prompts' inputs projected out (AlphaEdit's null space,
    estimated on the prompts at hand)."""
    own = _inputs(model, paths, facts, True, pad, device)
    other = _inputs(model, paths, unrelated, False, pad, device)
    out = {}
    for p in paths:
        _, s, vh = torch.linalg.svd(other[p], full_matrices=False)         # vh: [k, d_in]
        energy = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
        k = int((energy < cfg.null_energy).sum()) + 1
        basis = vh[:k]                                                       # directions unrelated prompts use
        x = own[p] - (own[p] @ basis.T) @ basis                              # [n, d_in]
        _, _, vh_own = torch.linalg.svd(x, full_matrices=False)
        out[p] = vh_own[: cfg.rank].to(device)
    return out


def train_delta(lm: LoadedModel, facts: list[Example], unrelated: list[Example], cfg: SleepConfig,
                on_step: Callable[[int, float, float], None] | None = None, null_prompts: list[Example] = ()) -> Delta:
    """Low-rank factors trained on the current weights (left unchanged); returned as a Delta."""
    model = lm.model
    paths = target_modules(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    factors, hooks = {}, []
    conv1d = spec_for(model).conv1d
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    fixed = (subject_directions(model, paths, facts, list(unrelated) + list(null_prompts), cfg, pad, lm.device)
             if cfg.inputs == "subject" else {})
    for path in paths:
        w = get_module(model, path).weight
        d_out, d_in = (w.shape[1], w.shape[0]) if conv1d else w.shape
        f = _Factors(d_in, d_out, cfg.rank, gen, fixed.get(path)).to(w.device)
        factors[path] = f
        hooks.append(get_module(model, path).register_forward_hook(lambda m, i, o, f=f: o + f(i[0]).to(o.dtype)))
    params = [p for f in factors.values() for p in f.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    body = model.base_model if hasattr(model, "base_model") else model
    head = model.get_output_embeddings()
    was_training = model.training
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)  # gradients for the factors only, not for every weight
    model.eval()
    try:
        for step in range(cfg.steps):
            pos = rng.sample(facts, min(cfg.batch, len(facts)))
            neg = rng.sample(unrelated, min(cfg.negative_batch, len(unrelated))) if unrelated and cfg.kl_weight > 0 else []
            opt.zero_grad()
            fact_loss = _kl(body, head, pos, pad, lm.device, per_sequence=cfg.per_sequence)
            keep_loss = _kl(body, head, neg, pad, lm.device, margin=cfg.margin) if neg else torch.zeros((), device=lm.device)
            (fact_loss + cfg.kl_weight * keep_loss).backward()
            opt.step()
            if on_step is not None:
                on_step(step, fact_loss.item(), keep_loss.item())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        for n, p in model.named_parameters():
            p.requires_grad_(frozen[n])
    delta = Delta(method="sleep")
    for path, f in factors.items():
        delta.factors[f"{path}.weight"] = (f.b.detach().float().cpu(), f.a.detach().float().cpu().T.contiguous())
    return delta
