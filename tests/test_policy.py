"""When the memory's policy starts a sleep, on the tiny model (what a sleep recalls is tested on the
real model in tests/test_sleep.py; here only which sleeps start and how the ledger records them)."""

import warnings

import pytest

from rose_memory.consolidation import recheck
from rose_memory.memory import ParametricMemory
from rose_memory.tiny import tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

FACTS = [("lives in the city of", "Warsaw"), ("{}'s favorite color is", "brown")]
# A sleep with no training steps (its delta carries nothing, so the gate refuses it), small sets.
NO_TRAINING = {"steps": 0, "samples": 0, "model_questions": 0, "other_names": 2, "generic_negatives": 2,
               "scale_steps": [0.0], "canary_names": 2, "delta_scales": [1.0], "answer_tokens": 6, "gate_tokens": 8}


def memory(tmp_path, tiny_dir, **policy) -> ParametricMemory:
    """A tiny-model memory holding Aurelio's two facts (edit 1), written before the policy is on."""
    home = tiny_home(tmp_path / "home", tiny_dir)
    with ParametricMemory(home) as mem:
        assert mem.write("Aurelio", FACTS).edit_id == 1
    return ParametricMemory(home, policy={"enabled": True, **policy}, sleep=NO_TRAINING)


def test_separate_writes_trigger_a_sleep(tmp_path, tiny_dir):
    """The policy sleeps a subject written this many times since its last sleep. With no training
    steps the sleep delta carries nothing, so the gate refuses it and the wake edit stays applied."""
    policy = {"writes_per_subject": 2, "recheck_every": None, "recheck_min_recall": 1.01}  # recheck() always wants a sleep
    with memory(tmp_path, tiny_dir, **policy) as mem:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = mem.write("Aurelio", [("works as a", "carpenter")])
        assert not [w for w in caught if "consolidation" in str(w.message)]  # failures would warn
        assert rec.status == "applied" and rec.superseded == [1] and rec.consolidated_into is None  # the edit carries 1's facts
        rows = {r["id"]: r for r in mem.edits()}
        (sleep,) = [r for r in rows.values() if r["origin"] == "sleep"]
        assert {f["object"] for f in sleep["facts"]} == {"Warsaw", "brown", "carpenter"}
        assert sleep["status"] == "failed" and "no more held-back questions" in sleep["reason"]
        assert [f["stage"] for f in sleep["metrics"]["facts"]] == ["wake"] * 3
        assert list(mem.live) == [rec.edit_id]
        assert mem.verify() == []
        # refused with nothing new since: the re-verification notes it and does not sleep it again
        recheck(mem)
        assert sum(r["origin"] == "sleep" for r in mem.edits()) == 1
        notes = [e["data"]["recheck"] for e in mem.ledger.events(rec.edit_id) if "recheck" in e["data"]]
        assert notes and notes[-1]["sleep"].startswith("skipped")
        # slept on (refused): one more write is one new wake edit, under the 2 that start a sleep
        mem.write("Aurelio", [("has a pet", "ferret")])
        assert sum(r["origin"] == "sleep" for r in mem.edits()) == 1
        recheck(mem)  # something new: the re-verification tries again
        assert sum(r["origin"] == "sleep" for r in mem.edits()) == 2


def test_the_interval_sleeps_only_subjects_with_new_wake_edits(tmp_path, tiny_dir):
    """`every_n_writes` sleeps the subjects written since their last sleep, not every subject
    with a live wake edit (a wake edit stays beside the sleep delta that reads it)."""
    with memory(tmp_path, tiny_dir, writes_per_subject=None, every_n_writes=1, recheck_every=None) as mem:
        mem.write("Liora", [("plays the", "cello")])
        mem.write("Liora", [("works as a", "pilot")])
        slept = [r["subject"] for r in mem.edits() if r["origin"] == "sleep"]
    # the first write sleeps both subjects (Aurelio's edit predates any sleep); the second only Liora
    assert sorted(slept) == ["Aurelio", "Liora", "Liora"]


def test_consolidate_sleeps_what_is_new_unless_asked_again(tmp_path, tiny_dir):
    """`consolidate()` (an idle agent, the end of a conversation, `/sleep`) sleeps the subjects with
    a wake edit since their last sleep; a subject slept on (here refused: no training steps) with
    nothing new is left alone, unless named or `again=True`."""
    with memory(tmp_path, tiny_dir, enabled=False) as mem:
        assert [r.subject for r in mem.consolidate()] == ["Aurelio"]
        assert mem.consolidate() == []                                   # nothing new since
        assert [r.subject for r in mem.consolidate("Aurelio")] == ["Aurelio"]  # named: slept again
        mem.write("Liora", [("plays the", "cello")])
        assert [r.subject for r in mem.consolidate()] == ["Liora"]
        assert sorted(r.subject for r in mem.consolidate(again=True)) == ["Aurelio", "Liora"]
        assert sum(r["origin"] == "sleep" for r in mem.edits()) == 5 and mem.verify() == []


def test_by_default_a_subjects_later_writes_do_not_leave_it_without_a_sleep():
    """Facts written one at a time (the eval's sequential mode), every sleep kept: a per-subject
    trigger at 3 writes sleeps each 4-fact subject at its third write, its fourth write supersedes that
    sleep, and the sleep reset the interval count, so no subject ends slept; the default (interval
    only) leaves the subjects written before the last interval slept (benchmarks/policy_schedule.py)."""
    import sys
    from pathlib import Path

    from rose_memory.consolidation import ConsolidationPolicy

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from policy_schedule import schedule

    assert ConsolidationPolicy().writes_per_subject is None
    subjects = [(n, [("lives in the city of", c), ("works as a", j), ("has a pet", p), ("plays the", i)])
                for n, c, j, p, i in [("Odile Marsh", "Lyon", "baker", "ferret", "cello"),
                                      ("Tarek Lund", "Oslo", "pilot", "parrot", "flute"),
                                      ("Wren Castell", "Quito", "dentist", "turtle", "harp")]]
    per_subject = schedule(subjects, {"every_n_writes": 5, "writes_per_subject": 3})
    assert per_subject["sleeps"] == 3 and per_subject["status"] == {"superseded": 3} and per_subject["ending_slept"] == 0
    interval = schedule(subjects, {"every_n_writes": 5})
    assert interval["ending_slept"] == 2 and interval["ending_awake"] == ["Wren Castell"]


def test_a_sleep_holds_the_other_subjects_facts_as_they_are(tmp_path, tiny_dir):
    """A subject's sleep is given the facts the memory holds about other subjects (their edit forms and
    an open request each join the unrelated prompts), at most `remembered` of them."""
    from rose_memory.consolidation import _remembered

    with memory(tmp_path, tiny_dir, enabled=False) as mem:
        mem.write("Liora", [("plays the", "cello")])
        assert [(r.subject, r.target) for r in _remembered(mem, "default", "Liora")] == [
            ("Aurelio", "Warsaw"), ("Aurelio", "brown")]
        (rec,) = mem.consolidate("Liora")
        noted = [e["data"]["transfer_set"] for e in mem.ledger.events(rec.edit_id) if "transfer_set" in e["data"]]
        assert noted[0]["remembered"] == 2
        with_two = noted[0]["unrelated"]
    home = tmp_path / "home"
    with ParametricMemory(home, sleep={**NO_TRAINING, "remembered": 0}) as mem:
        (rec,) = mem.consolidate("Liora")
        noted = [e["data"]["transfer_set"] for e in mem.ledger.events(rec.edit_id) if "transfer_set" in e["data"]]
        # Aurelio's two edit forms and one open request about him, where the memory answered them
        assert noted[0]["remembered"] == 0 and noted[0]["unrelated"] <= with_two - 3 + 0
