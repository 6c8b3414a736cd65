"""The student: the current weights plus low-rank factors on chosen linear layers, trained to match
the teacher on the kept answers and the model before the sleep on unrelated prompts (KL both)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import torch

from ..arch import get_module, num_layers, spec_for
from ..errors import RoseMemoryError
from ..editing.delta import Delta
from ..editing.hooks import stop_after_block
from ..generate import encode_prefix
from ..model import LoadedModel
from .config import SleepConfig
from .prefix import Hidden, block_of, cached_forward
from .teacher import Example, body_and_pad, prefixed_batch


def _layers(model: torch.nn.Module, cfg: SleepConfig) -> list[int]:
    n = num_layers(model)
    if cfg.layers is not None:
        return cfg.layers
    # from after the wake edit's layers (RoSE: the first third) to the late blocks: a delta keyed to the
    # wake edit's trace reads what the edit changed, which only exists after its layers
    if cfg.modules == "value" or (cfg.modules == "out" and cfg.inputs == "trace"):
        return list(range(int(0.3 * n), int(0.85 * n) + 1))
    return list(range(n // 3, 2 * n // 3))


def target_modules(model: torch.nn.Module, cfg: SleepConfig) -> list[str]:
    """Module paths that get factors: per chosen block, its MLP's linear layers (or only the output
    projection: with `modules="out"`, and with `inputs="key"`, whose key statistics are of that input;
    or its attention value projection, `modules="value"`)."""
    spec = spec_for(model)
    layers = _layers(model, cfg)
    if cfg.modules == "value":
        return [spec.value_module(i) for i in layers]
    out = []
    for i in layers:
        mlp_out = spec.mlp_out_module(i)
        parent = mlp_out.rsplit(".", 1)[0]
        if cfg.modules == "out" or cfg.inputs == "key" or parent == spec.block(i):  # opt keeps its MLP in the block itself
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
        self.gain = 1.0  # SleepConfig.negative_gain while the unrelated prompts run

    def forward(self, x):
        return self.gain * ((x @ self.a.T) @ self.b.T)


def _precision(lm: LoadedModel, cfg: SleepConfig):
    """The context a training step's forward runs in: autocast to bfloat16 when asked (the model's
    weights stay float32; products run in bfloat16, softmax and losses in float32)."""
    if cfg.train_precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=lm.device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def _plain_attention(lm: LoadedModel):
    """On a CPU, attention as plain products while the student trains: the CPU's fused attention
    kernel takes a quarter of a training step in its backward on these short sequences (profiled
    on the embedded model, 2026-12-03; the plain one 15 % faster per step). The same attention."""
    config = getattr(lm.model, "config", None)
    old = getattr(config, "_attn_implementation", None)
    if lm.device.type != "cpu" or old in (None, "eager"):
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = old


def _kl(hidden: Hidden, head, examples: list[Example], device, per_sequence: bool = False,
        margin: float = 0.0) -> torch.Tensor:
    """KL(target || student) at every answer token: the mean over tokens, or (per_sequence) the
    sum over each answer's tokens averaged over answers, so that the one token that names the
    object is not outweighed by the restated question around it. With `margin`, plus a hinge
    that keeps each answer token ahead of every other token by that many nats: locality is
    judged on greedy tokens, and a KL that is small on average still flips the tokens that
    were only narrowly ahead."""
    return _kl_of(hidden(examples), head, examples, device, per_sequence, margin)


def _kl_of(h: torch.Tensor, head, examples: list[Example], device, per_sequence: bool = False,
           margin: float = 0.0) -> torch.Tensor:
    """`_kl` from the examples' last hidden states `h` [n, len, d] (rows in the examples' order)."""
    spans = [(len(e.prompt) - 1, len(e.answer)) for e in examples]  # positions that predict the answer
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


def _inputs(model, paths: list[str], examples: list[Example], prompt_only: bool, pad: int, device,
            positions: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Each module's input vectors [n, d_in] over the examples' tokens (prompt tokens only if asked;
    only `positions[i]` of example i if given), rows in the examples' order. The forward runs the
    model's body only and stops after the deepest module's block (`stop_after_block`): the blocks
    above it and the output head (a 49k-word vocabulary on the embedded model) would be computed for
    nothing. Rows go in chunks sorted by prompt, so a chunk mostly shares its beginning (the chat
    template's system turn): that runs once, its key/value cache serves the chunk, and its inputs
    stand for every row's (a causal model computes them the same in each)."""
    rows: list[dict[str, torch.Tensor]] = [{} for _ in examples]
    grabbed: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    body = getattr(model, "base_model", model)
    last = max(block_of(model, p) for p in paths)

    def encode(body, tokens, device):  # the beginning's cache up to the deepest module's block
        return encode_prefix(body, tokens, device, within=lambda: stop_after_block(model, last))
    hooks = [get_module(model, p).register_forward_hook(lambda m, i, o, p=p: grabbed[p].append(i[0].detach().float().cpu()))
             for p in paths]
    order = sorted(range(len(examples)), key=lambda i: (list(examples[i].prompt), i))
    try:
        with torch.no_grad():
            for start in range(0, len(order), 16):
                chunk = [examples[i] for i in order[start:start + 16]]
                tokens = [list(e.prompt) + list(e.answer) for e in chunk]
                for v in grabbed.values():
                    v.clear()
                ids, mask, kwargs, shared = prefixed_batch(body, tokens, [list(e.prompt) for e in chunk], pad, device, encode)
                with stop_after_block(model, last):
                    body(input_ids=ids, attention_mask=mask, **kwargs)
                for p, got in grabbed.items():
                    for j, i in enumerate(order[start:start + 16]):
                        x = got[-1][j, : len(tokens[j]) - shared]
                        rows[i][p] = torch.cat([got[0][0], x]) if shared else x
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for p in paths:
        picked = []
        for i, e in enumerate(examples):
            x = rows[i][p]
            if positions is not None:
                x = x[sorted({q for q in positions[i] if q < (len(e.prompt) if prompt_only else len(x))})]
            elif prompt_only:
                x = x[: len(e.prompt)]
            picked.append(x)
        out[p] = torch.cat(picked)
    return out


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


def _subject_positions(tok, prompt: list[int], subject: str) -> list[int]:
    """Positions of the subject's tokens in `prompt` (each way the tokenizer spells it: with or
    without a leading space, the last piece possibly merged with what follows, e.g. "'s")."""
    out: set[int] = set()
    for text in (subject, " " + subject):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for n in (len(ids), len(ids) - 1):
            if n < 1:
                continue
            for i in range(len(prompt) - n + 1):
                if prompt[i:i + n] == ids[:n]:
                    out.update(range(i, i + n))
    return sorted(out)


def _name_inputs(lm: LoadedModel, paths: list[str], rows: list[Example], names: list[str], pad: int) -> dict[str, torch.Tensor]:
    """Each module's inputs [n, d_in] at the tokens of `names` (any of them) in the rows' prompts, row
    by row. A causal model's prompt positions do not see the answer, and rows often share a prompt
    (several kept answers to one question): each distinct prompt runs once, without its answer."""
    index: dict[tuple[int, ...], int] = {}
    for e in rows:
        index.setdefault(tuple(e.prompt), len(index))
    prompts = [Example(list(p), [], torch.zeros(0), "prompt") for p in index]
    where = [sorted({i for n in names for i in _subject_positions(lm.tokenizer, e.prompt, n)}) for e in prompts]
    got = _inputs(lm.model, paths, prompts, True, pad, lm.device, positions=where)
    sizes = [len(w) for w in where]
    out = {}
    for p, x in got.items():
        parts = torch.split(x, sizes)
        out[p] = torch.cat([parts[index[tuple(e.prompt)]] for e in rows])
    return out


def key_directions(lm: LoadedModel, layers: list[int], paths: list[str], facts: list[Example], subject: str,
                   cfg: SleepConfig, pad: int, others: list[Example] = (), other_names: list[str] = ()) -> dict[str, torch.Tensor]:
    """Per MLP output projection, `rank` input directions [r, d_in] keyed to the subject: the
    directions a that best separate the subject's token inputs from ordinary text, i.e. the top
    generalised eigenvectors of (E[k k^T] over the subject's tokens, C = the key statistics RoSE
    and MEMIT use). a = C^-1 k is the matched filter MEMIT's update uses for one key; each is
    scaled so that its response over the subject's tokens has unit RMS, so ordinary text answers
    with about 1/sqrt(eigenvalue) of it. The delta then moves mainly where the subject is named.
    Whitened by C alone, the best key is "a person's name" (names are rare in ordinary text), so
    the other people's name tokens in the unrelated prompts are added to C (`key_others`)."""
    from ..editing.stats import second_moments

    own = _name_inputs(lm, paths, facts, [subject], pad)
    if not len(own[paths[0]]):
        raise RoseMemoryError(f"no training prompt of the sleep spells the subject {subject!r}")
    names = _name_inputs(lm, paths, list(others), list(other_names), pad) if other_names and cfg.key_others > 0 else {}
    cov = second_moments(lm, layers)
    out = {}
    for layer, p in zip(layers, paths):
        k = own[p]                                                                         # [n, d_in]
        c = cov[layer].double()
        if p in names and len(names[p]):  # other people's names too: a direction that fires on any name is no key
            m = names[p].double().T @ names[p].double() / len(names[p])
            c = c + cfg.key_others * m * (c.diagonal().sum() / m.diagonal().sum())
        out[p] = _matched_filters(k, c, cfg.rank).float().to(lm.device)
    return out


def _matched_filters(k: torch.Tensor, c: torch.Tensor, rank: int) -> torch.Tensor:
    """The top `rank` generalised eigenvectors a of (k^T k, c) [r, d_in], i.e. C^-1 k directions,
    each scaled so that its response over the rows of k has unit RMS: inputs distributed as c then
    answer with about 1/sqrt(eigenvalue) of that."""
    c = c.double()
    c = c + 1e-3 * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype)
    chol = torch.linalg.cholesky(c)
    kw = torch.linalg.solve_triangular(chol, k.double().T, upper=False)                    # L^-1 k: [d_in, n]
    u, s, _ = torch.linalg.svd(kw, full_matrices=False)                                    # whitened key directions
    r = min(rank, int((s > 1e-6 * s[0]).sum()))
    a = torch.linalg.solve_triangular(chol.T, u[:, :r], upper=True).T                      # [r, d_in]
    rms = (k.double() @ a.T).pow(2).mean(0).sqrt()                                         # response over k's rows
    return a / rms[:, None]


def trace_directions(lm: LoadedModel, paths: list[str], facts: list[Example], unrelated: list[Example], subject: str,
                     cfg: SleepConfig, pad: int, set_wake: Callable[[float], None]) -> dict[str, torch.Tensor]:
    """Per module, `rank` input directions [r, d_in] keyed to what the wake edit wrote: the change
    of the module's input at the subject's tokens when the wake edits go from 0 to `student_wake`,
    whitened by the inputs of the unrelated prompts (`_matched_filters`). The wake edit fires only
    where its subject is named, so this change is a marker other prompts barely carry (on the
    embedded model the top direction answers other prompts with 1/40 of its response at the
    subject); a value projection keyed to it carries the written fact to every position that
    attends to the subject, the path a question takes. Modules where the wake edit changes
    nothing (blocks before its layers) get no direction."""
    on = _name_inputs(lm, paths, facts, [subject], pad)
    if not len(on[paths[0]]):
        raise RoseMemoryError(f"no training prompt of the sleep spells the subject {subject!r}")
    set_wake(0.0)
    try:
        off = _name_inputs(lm, paths, facts, [subject], pad)
    finally:
        set_wake(cfg.student_wake)
    other = _inputs(lm.model, paths, list(unrelated), False, pad, lm.device)
    out = {}
    for p in paths:
        trace = on[p] - off[p]
        if trace.norm() <= 1e-6 * on[p].norm():
            continue
        x = other[p]  # the second moments in float32 (in float64 they took 7 s of a sleep), solved in float64
        out[p] = _matched_filters(trace, (x.T @ x / len(x)).double(), cfg.rank).float().to(lm.device)
    return out


def train_delta(lm: LoadedModel, facts: list[Example], unrelated: list[Example], cfg: SleepConfig,
                on_step: Callable[[int, float, float], None] | None = None, null_prompts: list[Example] = (),
                subject: str | None = None, other_names: list[str] = (),
                set_wake: Callable[[float], None] | None = None) -> Delta:
    """Low-rank factors trained on the current weights (left unchanged); returned as a Delta.
    `set_wake(scale)` sets the subject's wake edits to `scale` (needed by `inputs="trace"`)."""
    model = lm.model
    paths = target_modules(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    factors, hooks = {}, []
    conv1d = spec_for(model).conv1d
    _, pad = body_and_pad(lm)
    fixed = {}
    if cfg.inputs == "subject":
        fixed = subject_directions(model, paths, facts, list(unrelated) + list(null_prompts), cfg, pad, lm.device)
    elif cfg.inputs == "key":
        fixed = key_directions(lm, _layers(model, cfg), paths, facts, subject or "", cfg, pad, unrelated, other_names)
    elif cfg.inputs == "trace":
        if set_wake is None or cfg.student_wake <= 0:
            raise RoseMemoryError("inputs='trace' keys the delta to the wake edit: it needs the wake edits "
                                  "(student_wake > 0) and a way to set them")
        fixed = trace_directions(lm, paths, facts, unrelated, subject or "", cfg, pad, set_wake)
        paths = [p for p in paths if p in fixed]
        if not paths:
            raise RoseMemoryError("the wake edits change no input of the sleep's layers; choose later layers")
    for path in paths:
        w = get_module(model, path).weight
        d_out, d_in = (w.shape[1], w.shape[0]) if conv1d else w.shape
        f = _Factors(d_in, d_out, cfg.rank, gen, fixed.get(path)).to(w.device)
        factors[path] = f
        hooks.append(get_module(model, path).register_forward_hook(lambda m, i, o, f=f: o + f(i[0]).to(o.dtype)))
    params = [p for f in factors.values() for p in f.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    head = model.get_output_embeddings()
    was_training = model.training
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)  # gradients for the factors only, not for every weight
    model.eval()
    with _plain_attention(lm):
        try:
            # the blocks below the first factor are computed once per sequence (prefix.py)
            used = list(facts) + (list(unrelated) if cfg.kl_weight > 0 else [])  # no KL: the unrelated rows are never run
            hidden, _ = cached_forward(lm, min(block_of(model, p) for p in paths), used, facts[:4])
            for step in range(cfg.steps):
                pos = rng.sample(facts, min(cfg.batch, len(facts)))
                neg = rng.sample(unrelated, min(cfg.negative_batch, len(unrelated))) if unrelated and cfg.kl_weight > 0 else []
                opt.zero_grad()
                with _precision(lm, cfg):
                    if neg and cfg.negative_gain == 1.0:
                        # one forward over both kinds of rows (right-padded: each row's states are its own)
                        h = hidden(pos + neg)
                        fact_loss = _kl_of(h[: len(pos)], head, pos, lm.device, per_sequence=cfg.per_sequence)
                        keep_loss = _kl_of(h[len(pos):], head, neg, lm.device, margin=cfg.margin)
                    else:
                        fact_loss = _kl(hidden, head, pos, lm.device, per_sequence=cfg.per_sequence)
                        for f in factors.values():
                            f.gain = cfg.negative_gain
                        try:
                            keep_loss = _kl(hidden, head, neg, lm.device, margin=cfg.margin) if neg else torch.zeros((), device=lm.device)
                        finally:
                            for f in factors.values():
                                f.gain = 1.0
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
