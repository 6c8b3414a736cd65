"""The write guard (canary answers before and after a write) and protected subjects, on the tiny random model.

The edit itself is replaced by a chosen Delta, so that a harmful write and a harmless one are
known in advance: a large change to both MLP output projections, and a zero one.
"""

from __future__ import annotations

import pytest
import torch

import rose_memory.memory as memory_module
from rose_memory.editing.delta import Delta
from rose_memory.errors import RoseMemoryError
from rose_memory.memory import ParametricMemory
from rose_memory.tiny import tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

GUARD = {"enabled": True, "max_changed": 0.25, "tokens": 4}


def delta_of(mem, scale: float) -> Delta:
    g = torch.Generator().manual_seed(0)
    factors = {}
    for name, p in mem.lm.model.named_parameters():
        if "down_proj" in name:
            factors[name] = (scale * torch.randn(p.shape[0], 4, generator=g), torch.randn(p.shape[1], 4, generator=g))
    return Delta(factors, method="rose")


@pytest.fixture
def home(tmp_path, tiny_dir):
    return tiny_home(tmp_path / "home", tiny_dir, guard=GUARD)


def params(mem) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in mem.lm.model.named_parameters()}


def test_a_write_that_changes_the_canary_answers_is_reverted_and_recorded(home, monkeypatch):
    with ParametricMemory(home) as mem:
        base = params(mem)
        monkeypatch.setattr(memory_module, "edit", lambda lm, reqs, **kw: delta_of(mem, 50.0))
        record = mem.write("Aurelio", [("lives in the city of", "Warsaw")])
        assert record.status == "failed" and record.reason.startswith("write guard:"), record.reason
        assert "more than guard.max_changed = 25%" in record.reason
        assert all(torch.equal(p, base[n]) for n, p in params(mem).items())   # reverted exactly
        (row,) = mem.edits()
        assert row["status"] == "failed" and row["reason"] == record.reason
        guard = row["metrics"]["guard"]
        assert guard["canaries"] == 8 and guard["changed"] / 8 > 0.25 and guard["examples"]
        assert mem.live == {} and mem.verify() == []


def test_a_harmless_write_passes_the_guard(home, monkeypatch):
    with ParametricMemory(home) as mem:
        monkeypatch.setattr(memory_module, "edit", lambda lm, reqs, **kw: delta_of(mem, 0.0))
        record = mem.write("Aurelio", [("lives in the city of", "Warsaw")])
        assert record.status == "applied", record.reason
        assert mem.edits()[0]["metrics"]["guard"]["changed"] == 0


def test_the_guard_compares_with_the_answers_before_this_write(home, monkeypatch):
    """The canaries' reference is the model as it is before the write (its earlier edits included)."""
    with ParametricMemory(home, guard={"enabled": False}) as mem:
        monkeypatch.setattr(memory_module, "edit", lambda lm, reqs, **kw: delta_of(mem, 50.0))
        assert mem.write("Aurelio", [("lives in the city of", "Warsaw")]).status == "applied"  # no guard
    with ParametricMemory(home, guard={"enabled": True}) as mem:
        monkeypatch.setattr(memory_module, "edit", lambda lm, reqs, **kw: delta_of(mem, 0.0))
        record = mem.write("Bruno", [("works as a", "baker")])
        assert record.status == "applied", record.reason          # changes nothing relative to edit 1's weights


def test_protected_subjects_cannot_be_written_by_a_tool(home):
    from rose_memory.agents import RoseMemoryTool

    with ParametricMemory(home, guard={"enabled": False, "protected_subjects": ["Aurelio Brandt"]}) as mem:
        tool = RoseMemoryTool(memory=mem)
        for subject in ("Aurelio Brandt", "aurelio   BRANDT"):
            msg = tool.invoke({"type": "tool_call", "id": "c1", "name": "remember_facts",
                               "args": {"subject": subject, "facts": [{"relation": "works as a", "object": "spy"}]}})
            assert msg.status == "error" and "protected subject" in msg.content, msg.content
        assert mem.edits() == []
        with pytest.raises(RoseMemoryError, match="protected subject"):
            mem.write("Aurelio Brandt", [("works as a", "spy")], via="tool")
        assert mem.write("Aurelio Brandt", [("works as a", "nurse")]).status == "applied"   # the program may
        msg = tool.invoke({"type": "tool_call", "id": "c2", "name": "remember_facts",
                           "args": {"subject": "Aurelio Brandtová", "facts": [{"relation": "works as a", "object": "spy"}]}})
        assert msg.status == "success"                                                   # only the exact subject
