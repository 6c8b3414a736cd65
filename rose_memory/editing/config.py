"""Editing hyperparameters: one pydantic config, with a preset per model family."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..errors import RoseMemoryError


class EditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a silent default

    # Where: MLP output projections of these blocks; the target value lives at the last one.
    layers: list[int] = Field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    # Target value optimisation (MEMIT's compute_z, batched).
    v_steps: int = 25
    v_lr: float = 0.5
    rose_lr: float = 0.5             # RoSE's value step size
    clamp_norm_factor: float = 0.75
    v_weight_decay: float = 0.5
    kl_factor: float = 0.0625
    batched: bool = True             # all rows of a write in padded batches (False: one row per forward)
    upper_only: bool = True          # each step recomputes only the blocks above the value layer
    # The value optimisation's blocks under bf16 autocast where bf16 matmuls are native (a GPU,
    # a CPU with AVX512-BF16/AMX). Off: on this 2-core CPU a write was 11-18% faster, and
    # instruction was 0.19 / 0.14 against 0.36 / 0.29 on our two tuning splits, a gap the
    # default itself shows between two seeds (0.17 / 0.14 with seed 1): not shown safe yet.
    value_bf16: bool = False
    stop_prob: float = 0.9           # stop when every row's target probability reaches this
    n_generic_contexts: int = 5      # MEMIT: five model-sampled prefixes of 10 tokens, plus "{}"
    generic_context_tokens: int = 10
    # RoSE: Isotropic Geometric Alignment.
    iso: bool = True
    iso_lambda: float = 0.1          # ridge, relative to the mean squared key norm
    iso_protect: float = Field(0.8, ge=0.0, lt=1.0)  # share of generic key energy whose directions the update avoids
    keep_weight: float = Field(1.0, ge=0.0)  # weight of "leave these keys alone" rows (name, chat template)
    # Also leave alone the last-token keys of this many other people (contexts.OTHER_NAMES, 64),
    # plain and in a chat question: other subjects' questions are most of the locality probes.
    # Dev split, seed 0: locality 0.937 -> 0.945 with 16 (instruction 71 -> 69 of 246); 64 gave
    # the same locality (0.945) for 25% more time per write. docs/results.md, commit 3c1df66.
    keep_names: int = Field(16, ge=0, le=64)
    chat_contexts: bool = True       # align keys and targets inside the chat template too
    # The chat row that asks with the relation's own words ("S lives in the city of?"): "object"
    # scores the object as the reply's first word (the default until 7cc1853; its target probability
    # stayed under 0.15, so that one row's loss drove the value), "restate" scores a reply that
    # restates the fact, "off" (default) leaves it out. Measured: docs/tuning.md, commit 7cc1853.
    relation_question: Literal["object", "restate", "off"] = "off"
    # Rows per fact: the edit form plain and after this many sampled prefixes (at most
    # n_generic_contexts), and this many open requests (contexts.OPEN_REQUESTS) in the chat template.
    raw_prefixes: int = Field(2, ge=0)
    open_requests: int = Field(2, ge=0, le=6)
    referent_rows: bool = False      # per open request, a reply naming the subject "this person" (object scored)
    # Score the relation's words after the name restated in a chat reply ("S| lives in the city
    # of| X"), not only the name and the object: answers to questions that restate the name
    # mostly go on "S is a ..." (a made-up description) and never reach the fact.
    reply_relation: bool = False
    # Score the name restated in a chat reply (default) or leave it unscored, so that the value
    # spends itself on the object alone (in a 3-fact write the chat rows' object stays at
    # 0.25-0.76 while the restated name reaches 0.65-0.99).
    reply_name: bool = True
    name_rows: bool = False          # score the restated name after generic questions (keeps the name intact)
    # RoSE's rows encode each text piece as written ("about " + "Ann": a lone space token, then
    # "Ann"), not as the joined text tokenises (" Ann"), which the baselines use (MEMIT's way).
    # Measured on our two tuning splits (84 questions): instruction 0.32 as written vs 0.23
    # natural (generalization 0.20 vs 0.34); the varied token forms seem to widen the keys.
    natural_tokens: bool = False
    # RoSE: Hierarchical Knowledge Integration.
    hier: bool = True
    stage_steps: int = 12
    # Which rows a stage optimises: "new" (default) = relation j alone, kept close to stage j-1
    # by the anchor, the joint refinement then fits all; "all" (the default until 7cc1853) =
    # relations 1..j, each stage re-fitting the earlier ones. Measured: docs/tuning.md, commit 7cc1853.
    stage_rows: Literal["all", "new"] = "new"
    anchor_weight: float = 1.0       # keeps each stage close to the previous one
    joint_steps: int = 15
    flat_noise: float = Field(0.0, ge=0.0)  # value noise per step, relative to the hidden norm (flat minimum)
    # MEMIT covariance / AlphaEdit null space (statistics of the model's own sampled text).
    mom2_update_weight: float = 15000.0
    mom2_n_samples: int = 256
    mom2_sample_tokens: int = 64
    nullspace_threshold: float = 2e-2
    alphaedit_l2: float = 10.0
    # LoRA fine-tuning baseline (peft).
    lora_rank: int = 8
    lora_steps: int = 40
    lora_lr: float = 5e-3
    seed: int = 0

    @field_validator("raw_prefixes")
    @classmethod
    def _raw_prefixes_sampled(cls, v: int, info: ValidationInfo) -> int:
        # Checked with the settings, not with the model, so that `--set` refuses it before loading.
        n = info.data.get("n_generic_contexts")
        if n is not None and v > n:
            raise ValueError(f"must be at most n_generic_contexts ({n})")
        return v

    def checked(self, n_layers: int) -> "EditConfig":
        bad = [l for l in self.layers if not 0 <= l < n_layers]
        if not self.layers or bad:
            raise RoseMemoryError(f"edit layers {self.layers} must be non-empty and within 0..{n_layers - 1}")
        return self


# Per model family (config.model_type). Llama-family values follow MEMIT/AlphaEdit's Llama3-8B
# hyperparameters, with the layer band scaled to the depth of the embedded 30-layer model.
PRESETS: dict[str, dict] = {
    "llama": {},
    "qwen2": {},
    "mistral": {},
    "gpt2": {"mom2_update_weight": 20000.0, "v_lr": 0.5},
}


def config_for(model, overrides: dict | None = None) -> EditConfig:
    kind = getattr(model.config, "model_type", "")
    data = dict(PRESETS.get(kind, {}))
    n = model.config.num_hidden_layers
    if "layers" not in data and n != 30:
        # Same relative band as on the 30-layer default: ~10%..28% of depth.
        lo, hi = max(1, round(0.1 * n)), max(2, round(0.28 * n))
        data["layers"] = list(range(lo, hi + 1))
    data.update(overrides or {})
    return validated(data).checked(n)


def validated(data: dict, what: str = "bad edit config") -> EditConfig:
    """EditConfig(**data), with pydantic's first error turned into the project's error."""
    try:
        return EditConfig(**data)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "extra_forbidden":
            unknown = sorted(set(data) - set(EditConfig.model_fields))
            raise RoseMemoryError(f"{what}: unknown editing setting(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(EditConfig.model_fields)}") from None
        raise RoseMemoryError(f"{what}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
