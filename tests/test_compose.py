"""How the memory sets its weights from deltas (`ParametricMemory._compose`), on the tiny model."""

import torch

from rose_memory.editing.delta import Delta
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_model
from rose_memory.sleep import scaled
from rose_memory.tiny import tiny_home


def test_a_scaled_copy_under_the_same_id_is_applied(tmp_path, tiny_dir):
    """The sleep stage tries its delta at several scales under one ledger id (the canary) and gates
    the one it chose: each copy must reach the weights, not be skipped as already applied."""
    with ParametricMemory(tiny_home(tmp_path / "home", tiny_dir), model=load_model(str(tiny_dir))) as mem:
        params = dict(mem.lm.model.named_parameters())
        name = next(n for n in params if "down_proj" in n)
        w = params[name]
        base = w.detach().clone()
        g = torch.Generator().manual_seed(0)
        d = Delta({name: (torch.randn(w.shape[0], 1, generator=g), torch.randn(w.shape[1], 1, generator=g))})
        upd = d.factors[name][0] @ d.factors[name][1].T
        mem._compose({9: d})
        assert torch.allclose(w, base + upd, atol=1e-6)
        for s in (0.5, 0.25):
            mem._compose({9: scaled(d, s)})
            assert torch.allclose(w, base + s * upd, atol=1e-6)
        mem._compose({9: d}, scales={9: 0.5})  # a scale given for the id itself
        assert torch.allclose(w, base + 0.5 * upd, atol=1e-6)
        mem._compose({})
        assert torch.equal(w, base)
