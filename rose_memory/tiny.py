"""A tiny randomly initialised Llama with the embedded model's tokenizer, saved as a model folder.

For tests and benchmarks of what happens around an edit (the ledger, crashes, locks, namespaces,
bad input): a memory opened on this folder loads it in well under a second and writes in about
one, so child processes can be killed at many points cheaply. Its answers are noise; nothing
about recall is measured on it.
"""

from __future__ import annotations

import os
from pathlib import Path

# Settings that make a write on the tiny model cheap: few value steps, few sampled texts.
TINY_EDIT = {"v_steps": 3, "stage_steps": 2, "joint_steps": 2, "mom2_n_samples": 8, "mom2_sample_tokens": 8,
             "n_generic_contexts": 2, "raw_prefixes": 1, "open_requests": 1, "keep_names": 2}
# A memory on the tiny model: its writes are kept whatever they recall, the policy never sleeps.
TINY_MEMORY = {"method": "rose", "edit": TINY_EDIT, "verify": {"min_edit_recall": 0.0, "raw_tokens": 2, "chat_tokens": 2},
               "policy": {"enabled": False}, "guard": {"enabled": False}}


def default_dir() -> Path:
    """Where tests and benchmarks keep the tiny model: the memory's cache folder (made once, reused)."""
    return Path(os.environ.get("ROSE_MEMORY_CACHE", Path.home() / ".cache" / "rose-memory")) / "tiny-llama-4x32"


def save_tiny_model(directory: str | os.PathLike | None = None, layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """Write a tiny random Llama (model and tokenizer) to `directory` and return it; reused if already there."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .model import EMBEDDED_GGUF, embedded_dir

    out = Path(directory) if directory is not None else default_dir()
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(embedded_dir(), gguf_file=EMBEDDED_GGUF)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = AutoConfig.for_model(
        "llama", num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
        num_key_value_heads=2, head_dim=hidden // 4, vocab_size=len(tok), max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")  # two first users at once: one wins, whole
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.rename(tmp, out)
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tiny_home(home: str | os.PathLike, model_dir: str | os.PathLike, **settings) -> Path:
    """A memory home whose config.json names the tiny model and the cheap settings (`settings` override them)."""
    import json

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    config = dict(TINY_MEMORY) | {"model": str(Path(model_dir).resolve())}
    for key, value in settings.items():
        config[key] = config[key] | value if isinstance(config.get(key), dict) and isinstance(value, dict) else value
    (home / "config.json").write_text(json.dumps(config, indent=2))
    return home


def base_plus(base: dict, deltas: list) -> dict:
    """The weights `base` + `deltas` composed as the memory composes them (ledger order, float32),
    computed here independently of the memory: what tests and benchmarks compare the live weights with."""
    import torch

    out = dict(base)
    for name in {n for d in deltas for n in d.factors}:
        u = torch.cat([d.factors[name][0].float() for d in deltas if name in d.factors], 1)
        v = torch.cat([d.factors[name][1].float() for d in deltas if name in d.factors], 1)
        out[name] = base[name].float() + u @ v.T
    return out
