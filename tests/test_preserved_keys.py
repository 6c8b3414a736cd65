"""AlphaEdit's sequential setting in a memory, on the tiny random model (rose_memory.tiny): each
write is solved with the K K^T of the edits live at that moment (the paper's preserved keys),
read from their stored Deltas. Structure only; AlphaEdit's recall is measured by `rose-memory eval`."""

from __future__ import annotations

import pytest
import torch

import rose_memory.memory as memory_module
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_model
from rose_memory.tiny import tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")


def test_alphaedit_writes_avoid_the_keys_of_live_edits(tmp_path, tiny_dir, monkeypatch):
    base = {n: p.detach().clone() for n, p in load_model(str(tiny_dir)).model.named_parameters()}
    seen = []
    real_edit = memory_module.edit

    def recording_edit(lm, reqs, **kw):
        cache = kw.get("cache")
        seen.append({l: m.clone() for l, m in cache.preserved.items()} if cache is not None else None)
        return real_edit(lm, reqs, **kw)

    monkeypatch.setattr(memory_module, "edit", recording_edit)
    home = tiny_home(tmp_path / "alpha", tiny_dir, method="alphaedit")
    with ParametricMemory(home) as mem:
        first = mem.write("Aurelio", [("lives in the city of", "Warsaw")])
        mem.write("Kaiya Yardley", [("{} has a pet", "parrot")])
        keys = mem.live[first.edit_id].keys
    assert seen[0] == {}                              # nothing live before the first write
    assert set(keys) == set(seen[1]) and keys         # one entry per edited layer
    for layer, k in keys.items():                     # [1 request, d_in]
        assert k.shape[0] == 1
        assert torch.allclose(seen[1][layer], k.T @ k)
    with ParametricMemory(home) as mem:               # the keys come back from disk
        again = mem.live[first.edit_id].keys
        assert all(torch.equal(again[l], keys[l]) for l in keys)
        mem.forget(subject="Kaiya Yardley")
        mem.forget(first.edit_id)                     # nothing live: the next write preserves nothing
        mem.write("Kaiya Yardley", [("{} has a pet", "parrot")])
        assert seen[2] == {}
        assert mem.verify() == []
        live = {n: p for n, p in mem.lm.model.named_parameters()}
        (third,) = mem.live.values()
        for n, p in base.items():                     # base + the one live edit, nothing of the forgotten ones
            want = p + third.matrix(n) if n in third.factors else p
            assert torch.allclose(live[n], want, atol=1e-6), n
