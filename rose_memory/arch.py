"""Where each architecture keeps what editing needs: blocks, MLP output projections, final norm.

Add a family by adding one `ArchSpec` to `SPECS`, keyed by `config.model_type`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import RoseMemoryError


@dataclass(frozen=True)
class ArchSpec:
    layers: str        # the ModuleList of transformer blocks
    mlp_out: str       # MLP output projection inside block {i}; its input is the edit key
    final_norm: str    # the norm before the LM head
    conv1d: bool = False  # gpt2-style Conv1D weights are stored [d_in, d_out]
    value: str | None = None  # attention value projection inside block {i}, where it is its own linear layer

    def value_module(self, i: int) -> str:
        if self.value is None:
            raise RoseMemoryError("this architecture fuses its attention projections; the sleep's modules='value' "
                                  "needs a separate value projection (use modules='mlp')")
        return f"{self.layers}.{i}.{self.value}"

    def block(self, i: int) -> str:
        return f"{self.layers}.{i}"

    def mlp_out_module(self, i: int) -> str:
        return f"{self.layers}.{i}.{self.mlp_out}"

    def mlp_out_weight(self, i: int) -> str:
        return f"{self.mlp_out_module(i)}.weight"


_LLAMA = ArchSpec(layers="model.layers", mlp_out="mlp.down_proj", final_norm="model.norm", value="self_attn.v_proj")
SPECS: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": ArchSpec(layers="model.layers", mlp_out="mlp.down_proj", final_norm="model.norm"),  # fused qkv_proj
    "olmo": _LLAMA,
    "gemma3_text": _LLAMA,
    "olmo2": _LLAMA,
    "smollm3": _LLAMA,
    "stablelm": _LLAMA,
    "granite": _LLAMA,
    "cohere": _LLAMA,
    "starcoder2": ArchSpec(layers="model.layers", mlp_out="mlp.c_proj", final_norm="model.norm", value="self_attn.v_proj"),
    "gpt2": ArchSpec(layers="transformer.h", mlp_out="mlp.c_proj", final_norm="transformer.ln_f", conv1d=True),
    "gpt_neo": ArchSpec(layers="transformer.h", mlp_out="mlp.c_proj", final_norm="transformer.ln_f", value="attn.attention.v_proj"),
    "phi": ArchSpec(layers="model.layers", mlp_out="mlp.fc2", final_norm="model.final_layernorm", value="self_attn.v_proj"),
    "gptj": ArchSpec(layers="transformer.h", mlp_out="mlp.fc_out", final_norm="transformer.ln_f", value="attn.v_proj"),
    "codegen": ArchSpec(layers="transformer.h", mlp_out="mlp.fc_out", final_norm="transformer.ln_f"),
    "gpt_neox": ArchSpec(layers="gpt_neox.layers", mlp_out="mlp.dense_4h_to_h", final_norm="gpt_neox.final_layer_norm"),
    "falcon": ArchSpec(layers="transformer.h", mlp_out="mlp.dense_4h_to_h", final_norm="transformer.ln_f"),
    "bloom": ArchSpec(layers="transformer.h", mlp_out="mlp.dense_4h_to_h", final_norm="transformer.ln_f"),
    "opt": ArchSpec(layers="model.decoder.layers", mlp_out="fc2", final_norm="model.decoder.final_layer_norm",
                    value="self_attn.v_proj"),
}


def spec_for(model: torch.nn.Module) -> ArchSpec:
    kind = getattr(model.config, "model_type", None)
    if kind not in SPECS:
        raise RoseMemoryError(
            f"architecture {kind!r} is not described in rose_memory/arch.py; add an ArchSpec to SPECS "
            f"naming its block list, MLP output projection and final norm (known: {', '.join(sorted(SPECS))})"
        )
    spec = SPECS[kind]
    names = dict(model.named_modules())
    for path in (spec.layers, spec.mlp_out_module(0), spec.final_norm):
        if path not in names:
            raise RoseMemoryError(f"{kind}: module {path!r} not found; fix its ArchSpec in rose_memory/arch.py")
    return spec


def num_layers(model: torch.nn.Module) -> int:
    return len(get_module(model, spec_for(model).layers))


def get_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    module = model
    for part in path.split("."):
        module = getattr(module, part) if not part.isdigit() else module[int(part)]
    return module


def mlp_out_dims(model: torch.nn.Module, layer: int) -> tuple[int, int]:
    """(d_out, d_in) of the MLP output projection in Linear orientation."""
    spec = spec_for(model)
    w = get_module(model, spec.mlp_out_module(layer)).weight
    d0, d1 = w.shape
    return (d1, d0) if spec.conv1d else (d0, d1)
