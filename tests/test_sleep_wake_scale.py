"""The wake edit's scale after a sleep whose delta reads its trace (`student_wake` < 1), on the tiny model."""

import pytest
import torch

import rose_memory.consolidation as C
import rose_memory.sleep as S
from rose_memory.editing import edit
from rose_memory.facts import EditRequest
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_model
from rose_memory.sleep import SleepConfig, SleepOutcome, consolidate_subject, scaled
from rose_memory.tiny import tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = {"model_questions": 0, "samples": 0, "answer_tokens": 4, "other_names": 2, "person_questions": 1,
         "generic_negatives": 1, "canary_names": 2, "gate_tokens": 4, "delta_scales": [1.0], "steps": 2,
         "canary_refuse": False, "student_wake": 0.5}


def test_a_trace_keyed_sleep_is_gated_and_left_at_the_wake_scale_it_was_trained_on(tiny_dir, monkeypatch):
    """Trained with the wake edit at half strength, the delta is checked there (not at scale 1, where
    its trace would be twice what it learnt) and, kept, leaves the wake edit at 0.5."""
    torch.manual_seed(0)
    lm = load_model(str(tiny_dir))
    reqs = [EditRequest(subject="Aurelio Brandt", prompt="{} lives in the city of", target="Warsaw")]
    wake = edit(lm, reqs, method="rose")  # returned unapplied
    held, calls = [], []

    def set_weights(scales, delta):
        calls.append((list(scales), delta is not None))
        while held:
            held.pop().revert(lm.model)
        if scales[0]:
            held.append(scaled(wake, scales[0]).apply(lm.model))
        if delta is not None:
            held.append(delta.apply(lm.model))

    def gate(lm_, facts, cfg):  # the tiny model recalls nothing: the sleep delta "answers" the held-back questions
        slept = calls[-1][1]
        return [{"prompt": f.request.prompt, "object": f.request.target, "edit": True, "held_out": 1.0 if slept else 0.5,
                 "passed": True, "answers": []} for f in facts]

    monkeypatch.setattr(S, "check_facts", gate)
    out = consolidate_subject(lm, reqs, [[0]], set_weights, SleepConfig(**SMALL))
    assert out.delta is not None and out.reason is None
    assert [s["wake_scale"] for s in out.steps] == [0.5]           # gated where it was trained, once
    assert out.wake_scales == [0.5] and calls[-1] == ([0.5], True)
    assert [f["stage"] for f in out.facts] == ["wake"]              # the delta reads the wake edit: nothing is carried alone
    set_weights([0.0], None)


def test_the_memory_refuses_a_sleep_that_leaves_a_wake_edit_partly_scaled(tmp_path, tiny_dir, monkeypatch):
    """The memory applies a kept wake edit whole; a sleep whose outcome scales one to 0.5 is refused
    (ledger row failed, reason given) rather than applied at the wrong strength."""
    home = tiny_home(tmp_path / "home", tiny_dir)
    with ParametricMemory(home, sleep={"steps": 0}) as mem:
        wake = mem.write("Bruno", [("works as a", "baker")]).edit_id
        weights = {n: p.detach().clone() for n, p in mem.lm.model.named_parameters()}
        facts = [{"prompt": "{} works as a", "object": "baker", "stage": "wake", "before": {"edit": 1.0, "held_out": 0.5},
                  "after": {"edit": 1.0, "held_out": 1.0}, "kept_answers": 0, "sentence_answers": 0, "answers": []}]
        delta = scaled(mem.live[wake], 0.1)

        def sleep(lm, reqs, groups, set_weights, cfg, progress=False, on_step=None, remembered=()):
            set_weights([0.5], delta)
            return SleepOutcome(delta=delta, facts=facts, wake_scales=[0.5], after={"edit": 1.0, "held_out": 1.0, "passed": 1.0})

        monkeypatch.setattr(C, "consolidate_subject", sleep)
        (rec,) = mem.consolidate(subject="Bruno")
        assert rec.status == "failed" and "scale [0.5]" in rec.reason
        assert set(mem.live) == {wake} and mem.edits()[-1]["status"] == "failed"
        for n, p in mem.lm.model.named_parameters():
            assert torch.equal(p, weights[n]), n
