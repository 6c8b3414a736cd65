"""The sleep stage in a memory, on the real embedded model: one RoSE write, one sleep, shared by the tests.

One write of the city fact (the awake home) and one sleep of it (the slept home) are shared:
each test works on a copy of one of them (the ledger and delta files), so the file costs one
write and one sleep, plus two short sleeps. A kill at each of the sleep's crash points is
tested on the tiny model (tests/test_crash.py).
"""

import shutil

import pytest
import torch

from rose_memory.memory import ParametricMemory
from rose_memory.model import load_cached
from rose_memory.text import mentions

pytestmark = pytest.mark.slow

SUBJECT = "Aurelio Sarkisian"
FACTS = [("lives in the city of", "Warsaw"), ("{}'s favorite color is", "brown")]
QUIET = {"policy": {"enabled": False}}
# The fixture's sleep trains free MLP factors to carry the facts alone (student_wake 0, the
# settings of a memory that wants its wake edits removed; the default keyed delta reads the wake edit) and is applied whatever the canary says, so that the
# tests can look at a consolidated fact; the canary refusal has its own test below.
# Smaller than the defaults where the tests do not look (4 canary people, 8 unrelated prompts per
# step, 2 model-written questions per fact), to keep the suite short.
ALONE = {"modules": "mlp", "inputs": "free", "rank": 8, "lr": 5e-3, "steps": 16, "student_wake": 0.0, "canary_refuse": False, "delta_scales": [1.0], "margin": 0.0, "other_names": 16,
         "negative_batch": 8, "canary_names": 4, "model_questions": 2}
# The wake + sleep deltas together may answer fewer held-back questions than the wake edit
# alone, which `keep_if_worse` would refuse; it is off here so that the tests can look at an
# applied sleep.
KEEP = {"policy": {"enabled": False, "keep_if_worse": False}, "sleep": ALONE}
# A sleep that trains little and measures little, for the tests of what happens around it.
CHEAP = ALONE | {"model_questions": 0, "samples": 0, "other_names": 2, "generic_negatives": 2, "scale_steps": [0.0],
                 "canary_names": 2, "delta_scales": [1.0]}
# Wordings none of the transfer set's sources make (checked against the ledger below).
FRESH = ["In which city does Aurelio Sarkisian have his home?", "Aurelio Sarkisian's home city is where?",
         "Could you tell me where Aurelio Sarkisian lives?", "Where is Aurelio Sarkisian's home?",
         "Which city is Aurelio Sarkisian living in?"]


@pytest.fixture(scope="module")
def model():
    return load_cached()


@pytest.fixture(scope="module")
def base(model):
    return {n: p.detach().clone() for n, p in model.model.named_parameters()}


@pytest.fixture(scope="module")
def awake(tmp_path_factory, model, base):
    """A home with one wake edit (the city fact), and the weights it leaves; copied by each test that sleeps it."""
    home = tmp_path_factory.mktemp("awake")
    with ParametricMemory(home, model=model, **QUIET) as mem:
        assert mem.write(SUBJECT, FACTS[:1]).status == "applied"
        edited = {n: p.detach().clone() for n, p in model.model.named_parameters() if not torch.equal(p, base[n])}
    return home, edited


@pytest.fixture(scope="module")
def slept(tmp_path_factory, model, awake):
    """The awake home slept once; the answers to FRESH before the write and with the sleep delta alone."""
    home = shutil.copytree(awake[0], tmp_path_factory.mktemp("slept") / "home")
    with ParametricMemory(home, model=model, **KEEP) as mem:
        (rec,) = mem.consolidate()
        events = mem.ledger.events(rec.edit_id)
        live = dict(mem.live)
        # the weights the gate judged a consolidated fact on: the sleep delta alone, no wake edit
        mem._compose({rec.edit_id: live[rec.edit_id]} if rec.status == "applied" else {})
        after = [mem.ask(q) for q in FRESH]
        mem._compose({})
        before = [mem.ask(q) for q in FRESH]
        mem._compose(live)
    return home, 1, rec, before, after, events


@pytest.fixture
def home(slept, tmp_path):
    return shutil.copytree(slept[0], tmp_path / "home")




def test_sleep_is_recorded_step_by_step(slept):
    _, write_id, rec, _, _, events = slept
    assert rec.status == "applied", rec.reason
    kinds = [next(iter(e["data"])) for e in events if e["kind"] == "note"]
    assert kinds[:3] == ["gate", "transfer_set", "trained"] and kinds.count("gate") >= 4
    scales = [e["data"]["gate"]["wake_scale"] for e in events if e["kind"] == "note" and "gate" in e["data"]]
    assert scales[:4] == [1.0, 1.0, 0.5, 0.0]                        # the wake edit scaled down step by step
    assert {f["stage"] for f in rec.facts} <= {"consolidated", "wake"} and len(rec.facts) == 1
    if all(f["stage"] == "consolidated" for f in rec.facts):
        assert rec.replaced == [write_id] and rec.kept_awake == []
    else:
        assert rec.kept_awake == [write_id]


def test_a_consolidated_fact_is_answered_through_a_question_the_transfer_set_lacks(slept):
    _, _, rec, before, after, events = slept
    transfer = next(e["data"]["transfer_set"] for e in events if "transfer_set" in e["data"])
    asked = {q for f in transfer["questions"] for q in f["train"] + f["held_out"]} | set(transfer["open_requests"])
    assert not asked & set(FRESH)
    city = next(f for f in rec.facts if f["object"] == "Warsaw")
    assert city["stage"] == "consolidated", city
    assert not any(mentions(a, "Warsaw") for a in before), before  # the unedited model does not know it
    assert any(mentions(a, "Warsaw") for a in after), after


def test_the_weights_follow_the_ledger_after_reopening(home, model, slept):
    rec = slept[2]
    with ParametricMemory(home, model=model, **QUIET) as mem:
        assert mem.verify() == []
        assert sorted(mem.live) == sorted(rec.kept_awake + [rec.edit_id])


def test_forget_after_sleep_removes_the_fact_and_returns_the_weights_to_base(home, model, base, slept):
    write_id, rec = slept[1], slept[2]
    with ParametricMemory(home, model=model, **QUIET) as mem:
        ids = mem.forget(subject=SUBJECT)
        assert rec.edit_id in ids
        rows = {r["id"]: r for r in mem.edits()}
        assert rows[rec.edit_id]["status"] == rows[write_id]["status"] == "forgotten"
        assert not any(mentions(mem.ask(q), "Warsaw") for q in FRESH)
        assert mem.verify() == []
        for n, p in model.model.named_parameters():
            assert torch.equal(p, base[n]), n


def test_forget_a_consolidated_edit_writes_the_other_facts_again(home, model, slept):
    write_id, rec = slept[1], slept[2]
    if write_id not in rec.replaced:
        pytest.skip("the wake edit stayed applied: nothing consolidated to forget through the sleep delta")
    with ParametricMemory(home, model=model, **QUIET) as mem:
        ids = mem.forget(write_id)
        assert set(ids) == {rec.edit_id, write_id}
        assert mem.verify() == []
        assert mem.live == {}                        # its one fact was in the forgotten edit: nothing to write again


def test_gate_keeps_facts_that_fail_on_their_wake_edit(tmp_path, model, awake):
    """No training steps: the sleep delta is zero, every fact fails once the wake edit is scaled
    away, so the sleep is refused and the wake edit stays applied, weights as before."""
    home, edited = shutil.copytree(awake[0], tmp_path / "h"), awake[1]
    with ParametricMemory(home, model=model, sleep=CHEAP | {"steps": 0}, **QUIET) as mem:
        (rec,) = mem.consolidate(SUBJECT)
        assert rec.status == "failed" and "no more held-back questions" in rec.reason
        assert [f["stage"] for f in rec.facts] == ["wake"]
        assert mem.ledger.get(1)["status"] == "applied" and list(mem.live) == [1]
        for n, p in edited.items():
            assert torch.equal(dict(model.model.named_parameters())[n], p)
        assert mem.verify() == []


def _passes(lm, facts, cfg):
    return [{"prompt": f.request.prompt, "object": f.request.target, "edit": True, "held_out": 1.0,
             "passed": True, "answers": []} for f in facts]


def test_a_sleep_that_moves_answers_about_other_people_is_refused(tmp_path, model, awake, monkeypatch):
    """A delta trained with a far too large step changes the canary answers (people the sleep
    never trained on) at every scale: refused with that reason, weights as before, although
    the gate (made to pass every fact here) would have kept it."""
    import rose_memory.sleep as S

    monkeypatch.setattr(S, "check_facts", _passes)
    loud = CHEAP | {"steps": 3, "lr": 0.5, "canary_refuse": True, "canary_names": 4, "delta_scales": [1.0, 0.5]}
    with ParametricMemory(shutil.copytree(awake[0], tmp_path / "h"), model=model, sleep=loud, **QUIET) as mem:
        before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
        (rec,) = mem.consolidate(SUBJECT)
        assert rec.status == "failed" and "people it never saw" in rec.reason, rec.reason
        notes = [e["data"]["delta_scale"] for e in mem.ledger.events(rec.edit_id)
                 if e["kind"] == "note" and "delta_scale" in e["data"]]
        assert [c["scale"] for c in notes[0]["canary"]] == [1.0, 0.5]
        assert all(c["canary_same"] < 0.95 for c in notes[0]["canary"]) and notes[0]["canary_ok"] is False
        assert list(mem.live) == [1] and mem.verify() == []
        for n, p in model.model.named_parameters():
            assert torch.equal(p, before[n]), n
