"""Forget around a sleep delta on the tiny model: a wake edit kept beside the sleep delta that was
trained on top of it takes that sleep delta with it."""

import pytest
import torch

import rose_memory.sleep as S
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_model
from rose_memory.tiny import tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

# A sleep that trains a little and measures little (as in test_crash): what is tested is the ledger.
SLEEP = {"model_questions": 0, "samples": 0, "other_names": 2, "generic_negatives": 2, "scale_steps": [0.0],
         "canary_names": 2, "delta_scales": [1.0], "canary_refuse": False, "steps": 2}


def test_forget_a_wake_edit_kept_beside_its_sleep_delta(tmp_path, tiny_dir, monkeypatch):
    base = {n: p.detach().clone() for n, p in load_model(str(tiny_dir)).model.named_parameters()}
    wake_weights = {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2)}  # what RoSE writes on the tiny model

    def gate(lm, facts, cfg):  # the tiny model recalls nothing: a fact "passes" while its wake edit is applied
        moved = {n for n, p in lm.model.named_parameters() if not torch.equal(p, base[n].to(p.dtype))}
        awake = "model.layers.2.mlp.down_proj.weight" in moved
        slept = bool(moved - wake_weights)  # the sleep delta's factors lie elsewhere (or in block 1 beside the wake edit's)
        return [{"prompt": f.request.prompt, "object": f.request.target, "edit": awake, "held_out": 1.0 if slept else 0.5,
                 "passed": awake, "answers": []} for f in facts]

    monkeypatch.setattr(S, "check_facts", gate)
    home = tiny_home(tmp_path / "home", tiny_dir)
    with ParametricMemory(home, sleep=SLEEP) as mem:
        wake = mem.write("Bruno", [("works as a", "baker"), ("lives in the city of", "Lyon")]).edit_id
        rec = mem.consolidate(subject="Bruno")[0]
        assert rec.status == "applied", rec
        assert rec.kept_awake == [wake] and rec.replaced == []
        assert set(mem.live) == {wake, rec.edit_id}
        assert sorted(mem.forget(wake)) == sorted([wake, rec.edit_id])
        rows = {r["id"]: r for r in mem.edits()}
        assert rows[rec.edit_id]["status"] == rows[wake]["status"] == "forgotten"
        assert mem.live == {} and mem.verify() == []     # nothing written again: both facts went with the edit
        for n, p in mem.lm.model.named_parameters():
            assert torch.equal(p, base[n].to(p.dtype)), n
