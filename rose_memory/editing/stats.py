"""Second moments of MLP-output keys over generic text, for MEMIT's covariance and AlphaEdit's null space.

The corpus is text the model samples itself (nothing downloaded) or a user's text file.
Computed once per (model, corpus, layer) and cached on disk.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from ..arch import get_module, spec_for
from ..errors import RoseMemoryError
from ..model import LoadedModel
from ..progress import bar as progress_bar, stage
from .solvers import nullspace_projector, protect_projector

_memory: dict[str, torch.Tensor] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("ROSE_MEMORY_CACHE", Path.home() / ".cache" / "rose-memory")) / "stats"


def _corpus_id(corpus: str | None, n_samples: int, n_tokens: int, seed: int) -> str:
    if corpus is None:
        return f"self-sampled:{n_samples}x{n_tokens}:seed{seed}"
    if not os.path.isfile(corpus):
        raise RoseMemoryError(f"corpus file {corpus!r} does not exist; pass a UTF-8 text file or leave it out")
    digest = hashlib.sha256(Path(corpus).read_bytes()).hexdigest()[:16]
    return f"file:{digest}:{n_samples}x{n_tokens}"


def _texts(lm: LoadedModel, corpus: str | None, n_samples: int, n_tokens: int, seed: int, progress: bool) -> list[list[int]]:
    tok = lm.tokenizer
    if corpus is not None:
        text = Path(corpus).read_text(encoding="utf-8")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) < n_tokens:
            raise RoseMemoryError(f"corpus {corpus!r} has {len(ids)} tokens; need at least {n_tokens}")
        return [ids[i:i + n_tokens] for i in range(0, len(ids) - n_tokens + 1, n_tokens)][:n_samples]
    torch.manual_seed(seed)
    starts = ["The", "In", "A", "It", "This", "When", "He", "She", "We", "There", "One", "After"]
    seqs: list[list[int]] = []
    bar = progress_bar(total=n_samples, desc="sampling corpus", on=progress)
    chunk = 64
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        while len(seqs) < n_samples:
            b = min(chunk, n_samples - len(seqs))
            prompts = [starts[(len(seqs) + i) % len(starts)] for i in range(b)]
            enc = tok(prompts, return_tensors="pt", padding=True).to(lm.device)
            with torch.no_grad():
                out = lm.model.generate(**enc, do_sample=True, top_p=0.95, max_new_tokens=n_tokens,
                                        min_new_tokens=n_tokens, pad_token_id=tok.pad_token_id)
            for row, m in zip(out.tolist(), enc.attention_mask.tolist()):
                seqs.append(row[len(m) - sum(m):])
            bar.update(b)
    finally:
        tok.padding_side = old
        bar.close()
    return seqs


def second_moments(lm: LoadedModel, layers: list[int], corpus: str | None = None, n_samples: int = 256,
                   n_tokens: int = 64, seed: int = 0, progress: bool = False) -> dict[int, torch.Tensor]:
    """E[k k^T] of the MLP-out input over the corpus's tokens, per layer: {layer: [d_in, d_in]} float32."""
    cid = _corpus_id(corpus, n_samples, n_tokens, seed)
    keys = {l: hashlib.sha256(f"{lm.cache_id}|{cid}|{l}".encode()).hexdigest()[:24] for l in layers}
    out: dict[int, torch.Tensor] = {}
    todo = []
    for l, k in keys.items():
        path = cache_dir() / f"{k}.pt"
        if k in _memory:
            out[l] = _memory[k]
        elif path.exists():
            out[l] = _memory[k] = torch.load(path)
        else:
            todo.append(l)
    if not todo:
        return out
    stage(f"key statistics of layer(s) {', '.join(map(str, todo))}: computed once for this model, "
          f"then kept in {cache_dir()}", progress)
    seqs = _texts(lm, corpus, n_samples, n_tokens, seed, progress)
    spec = spec_for(lm.model)
    sums = {l: None for l in todo}
    count = 0
    handles = []
    for l in todo:
        def pre(_m, args, l=l):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            x = x[_mask_flat[0]]
            s = x.T @ x
            sums[l] = s if sums[l] is None else sums[l] + s
        handles.append(get_module(lm.model, spec.mlp_out_module(l)).register_forward_pre_hook(pre))
    _mask_flat = [None]
    tok = lm.tokenizer
    try:
        for start in progress_bar(range(0, len(seqs), 32), desc="key statistics", on=progress):
            part = seqs[start:start + 32]
            t = max(len(s) for s in part)
            ids = torch.full((len(part), t), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(part), t), dtype=torch.long)
            for i, s in enumerate(part):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            _mask_flat[0] = mask.reshape(-1).bool().to(lm.device)
            count += int(mask.sum())
            with torch.no_grad():
                getattr(lm.model, lm.model.base_model_prefix)(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
    finally:
        for h in handles:
            h.remove()
    cache_dir().mkdir(parents=True, exist_ok=True)
    for l in todo:
        mom = (sums[l] / count).cpu()
        path = cache_dir() / f"{keys[l]}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(mom, tmp)
        os.replace(tmp, path)
        out[l] = _memory[keys[l]] = mom
    return out


def moments_for(lm: LoadedModel, cfg, progress: bool = False) -> dict[int, torch.Tensor]:
    """second_moments() for the layers and sample sizes of an EditConfig."""
    return second_moments(lm, cfg.layers, n_samples=cfg.mom2_n_samples, n_tokens=cfg.mom2_sample_tokens,
                          seed=cfg.seed, progress=progress)


def _per_layer(lm: LoadedModel, cfg, tag: str, param: float, make, progress: bool) -> dict[int, torch.Tensor]:
    """make(cov, param) for each edited layer's statistics, memoised per model, statistics and param."""
    out = {}
    corpus = _corpus_id(None, cfg.mom2_n_samples, cfg.mom2_sample_tokens, cfg.seed)
    for layer, cov in moments_for(lm, cfg, progress).items():
        key = f"{tag}|{lm.cache_id}|{corpus}|{layer}|{param}"
        if key not in _memory:
            _memory[key] = make(cov, param)
        out[layer] = _memory[key]
    return out


def protectors_for(lm: LoadedModel, cfg, progress: bool = False) -> dict[int, torch.Tensor]:
    """RoSE's projectors off the shared key directions, per edited layer; computed once per
    model, statistics and energy (an eigendecomposition per layer, ~0.4 s each on 2 cores)."""
    return _per_layer(lm, cfg, "protect", cfg.iso_protect, protect_projector, progress)


def nullspace_projectors_for(lm: LoadedModel, cfg, progress: bool = False) -> dict[int, torch.Tensor]:
    """AlphaEdit's null-space projectors per edited layer, computed once per model, statistics
    and threshold (an SVD per layer), as AlphaEdit's code computes P once before its edits."""
    return _per_layer(lm, cfg, "null", cfg.nullspace_threshold, nullspace_projector, progress)
