"""Delta files and the LoRA adapter writer, without a model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rose_memory.editing.delta import Delta
from rose_memory.errors import RoseMemoryError
from rose_memory.stores.deltas import DeltaStore, save_lora_adapter
from rose_memory.stores.ledger import file_sha256

W5, W6 = "model.layers.5.mlp.down_proj.weight", "model.layers.6.mlp.down_proj.weight"


def delta(seed: int, rank: int = 2, names=(W5,)) -> Delta:
    g = torch.Generator().manual_seed(seed)
    return Delta({n: (torch.randn(12, rank, generator=g), torch.randn(20, rank, generator=g)) for n in names},
                 method="rose", meta={"seed": seed})


def test_round_trip_is_exact_and_atomic(tmp_path):
    store = DeltaStore(tmp_path)
    d = delta(0, names=(W5, W6))
    name, sha = store.save(7, d)
    assert name == "000007.safetensors" and not list(tmp_path.glob("*.tmp"))
    assert file_sha256(tmp_path / name) == sha
    back = store.load(name, sha)
    assert back.method == "rose" and back.meta == {"seed": 0}
    for n in d.factors:
        assert all(torch.equal(a, b) for a, b in zip(d.factors[n], back.factors[n]))


def test_leftover_tmp_is_cleaned_and_garbage_is_refused(tmp_path):
    store = DeltaStore(tmp_path)
    (tmp_path / "000001.safetensors.tmp").write_bytes(b"half a file")
    store.clean_tmp()
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "000002.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RoseMemoryError, match="not a readable safetensors"):
        store.load("000002.safetensors")
    with pytest.raises(RoseMemoryError, match="missing"):
        store.load("000003.safetensors")


def lora_update(out, name: str) -> torch.Tensor:
    t = load_file(out / "adapter_model.safetensors")
    module = name.removesuffix(".weight")
    return t[f"base_model.model.{module}.lora_B.weight"] @ t[f"base_model.model.{module}.lora_A.weight"]


def test_lora_adapter_reproduces_the_sum_exactly(tmp_path):
    deltas = [delta(0), delta(1, rank=3, names=(W5, W6))]
    report = save_lora_adapter(deltas, tmp_path, base_model="m", max_rank=64)
    assert report["rank"] == 5 and report["max_relative_error"] == 0.0
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 5  # peft scale alpha / r = 1
    assert sorted(cfg["target_modules"]) == [W5.removesuffix(".weight"), W6.removesuffix(".weight")]
    want5 = deltas[0].matrix(W5) + deltas[1].matrix(W5)
    assert torch.allclose(lora_update(tmp_path, W5), want5, atol=1e-5)
    assert torch.allclose(lora_update(tmp_path, W6), deltas[1].matrix(W6), atol=1e-5)  # zero-padded rank


def test_lora_adapter_truncates_and_reports_the_error(tmp_path):
    deltas = [delta(i, rank=2) for i in range(4)]  # total rank 8
    report = save_lora_adapter(deltas, tmp_path, base_model="m", max_rank=3)
    want = sum(d.matrix(W5) for d in deltas)
    got = lora_update(tmp_path, W5)
    err = float((got - want).norm() / want.norm())
    assert report["rank"] == 3 and 0 < report["max_relative_error"] < 1
    assert err == pytest.approx(report["max_relative_error"], rel=1e-3)
    s = torch.linalg.svdvals(want)
    assert err == pytest.approx(float(s[3:].norm() / s.norm()), rel=1e-3)  # the best rank-3 error
