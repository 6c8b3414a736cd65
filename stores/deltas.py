"""Each edit's Delta on disk: one safetensors file per edit, written atomically, named by edit id;
and the live deltas together as a peft LoRA adapter."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .. import faults
from ..editing.delta import Delta
from ..errors import RoseMemoryError


def delta_name(edit_id: int) -> str:
    return f"{edit_id:06d}.safetensors"


def save_delta(path: str | os.PathLike, delta: Delta) -> str:
    """Write `delta` to `path` (tmp file, fsync, os.replace: never half a file) and return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"method": delta.method, "meta": json.dumps(delta.meta, default=str)}
    blob = save(delta.state_dict(), metadata=meta)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    faults.point("deltas:tmp_written")  # the whole file on disk under its .tmp name, not yet in place
    os.replace(tmp, path)
    return hashlib.sha256(blob).hexdigest()


def load_delta(path: str | os.PathLike, sha256: str | None = None) -> Delta:
    """Read a Delta; with `sha256`, refuse a file whose bytes are not the ones recorded."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise RoseMemoryError(f"delta file {path} is missing; restore it or forget its edit") from None
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise RoseMemoryError(
            f"delta file {path} changed on disk (sha256 differs from the ledger); restore it from a backup "
            "or run `rose-memory ledger verify` to list every problem"
        )
    try:
        tensors = load(blob)
        meta = _metadata(blob)
    except (SafetensorError, ValueError) as err:
        raise RoseMemoryError(f"delta file {path} is not a readable safetensors file: {err}") from None
    return Delta.from_state_dict(tensors, method=meta.get("method", ""), meta=json.loads(meta.get("meta", "{}")))


def _metadata(blob: bytes) -> dict:
    # safetensors layout: 8-byte little-endian header length, then the JSON header.
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]).get("__metadata__", {})


class DeltaStore:
    """The deltas/ folder of a memory home."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self, edit_id: int, delta: Delta) -> tuple[str, str]:
        """Store the Delta of `edit_id`; returns (file name relative to root, sha256)."""
        name = delta_name(edit_id)
        return name, save_delta(self.root / name, delta)

    def load(self, name: str, sha256: str | None = None) -> Delta:
        return load_delta(self.root / name, sha256)

    def clean_tmp(self) -> None:
        """Remove half-written files a crash may have left (they were never referenced)."""
        for tmp in self.root.glob("*.tmp"):
            tmp.unlink(missing_ok=True)


def _truncate(u: torch.Tensor, v: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-`rank` factors of U V^T (SVD via two thin QRs) and the relative Frobenius error."""
    qu, ru = torch.linalg.qr(u)  # [d_out, R], [R, R]
    qv, rv = torch.linalg.qr(v)  # [d_in, R], [R, R]
    p, s, qh = torch.linalg.svd(ru @ rv.T)
    err = float((s[rank:].square().sum() / s.square().sum().clamp_min(1e-30)).sqrt())
    return qu @ (p[:, :rank] * s[:rank]), qv @ qh[:rank].T, err


def save_lora_adapter(deltas: list[Delta], directory: str | os.PathLike, *, base_model: str, max_rank: int,
                      fan_in_fan_out: bool = False) -> dict:
    """Write the sum of `deltas` as a peft LoRA adapter (adapter_config.json + adapter_model.safetensors).

    Per weight, the factors of all deltas are concatenated, so B A = sum of U V^T exactly while the
    total rank fits `max_rank`; beyond it the sum is SVD-truncated and the error reported.
    lora_alpha = r makes peft's scale 1. Ranks below r are padded with zero columns.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    if max_rank < 1:
        raise RoseMemoryError(f"max_rank must be at least 1, got {max_rank}")
    names = sorted({n for d in deltas for n in d.factors})
    if not names:
        raise RoseMemoryError("no weight deltas to export")
    factors = {n: (torch.cat([d.factors[n][0].float() for d in deltas if n in d.factors], 1),
                   torch.cat([d.factors[n][1].float() for d in deltas if n in d.factors], 1)) for n in names}
    rank = min(max_rank, max(u.shape[1] for u, _ in factors.values()))
    tensors, errors = {}, {}
    for name, (u, v) in factors.items():
        if u.shape[1] > rank:
            u, v, errors[name] = _truncate(u, v, rank)
        pad = rank - u.shape[1]
        u = torch.cat([u, u.new_zeros(u.shape[0], pad)], 1)
        v = torch.cat([v, v.new_zeros(v.shape[0], pad)], 1)
        module = name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = v.T.contiguous()  # [r, d_in]
        tensors[f"base_model.model.{module}.lora_B.weight"] = u.contiguous()    # [d_out, r]
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    modules = [n.removesuffix(".weight") for n in names]
    LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, lora_dropout=0.0, bias="none",
               task_type="CAUSAL_LM", fan_in_fan_out=fan_in_fan_out,
               base_model_name_or_path=base_model).save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return {"path": str(out), "rank": rank, "modules": modules,
            "max_relative_error": max(errors.values(), default=0.0), "truncated": errors}
