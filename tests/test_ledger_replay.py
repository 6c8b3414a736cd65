"""benchmarks/ledger_replay.py: the weights after each write and sleep rebuilt from a memory's ledger."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ledger_replay  # noqa: E402

from rose_memory.memory import ParametricMemory  # noqa: E402
from rose_memory.tiny import tiny_home  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

SUBJECTS = [
    {"subject": "Aurelio", "facts": [{"relation": "city", "prompt": "{} lives in the city of", "target": "Warsaw",
                                      "paraphrases": [], "questions": ["Where does {} live?"]}]},
    {"subject": "Liora", "facts": [{"relation": "pet", "prompt": "{} has a pet", "target": "ferret",
                                    "paraphrases": [], "questions": ["What pet does {} have?"]}]},
    {"subject": "Osric", "facts": [{"relation": "color", "prompt": "{}'s favorite color is", "target": "teal",  # never written
                                    "paraphrases": [], "questions": ["What is {}'s favorite color?", "Which color does {} like?"]}]},
]


def test_states_follow_what_each_row_replaced():
    rows = [{"id": 1, "status": "superseded", "delta_file": "1", "superseded_by": 2, "consolidated_into": None},
            {"id": 2, "status": "applied", "delta_file": "2", "superseded_by": None, "consolidated_into": None},
            {"id": 3, "status": "failed", "delta_file": None, "superseded_by": None, "consolidated_into": None},
            {"id": 4, "status": "consolidated", "delta_file": "4", "superseded_by": None, "consolidated_into": 5},
            {"id": 5, "status": "applied", "delta_file": "5", "superseded_by": None, "consolidated_into": None}]
    assert [(r["id"], live) for r, live in ledger_replay.states(rows)] == [(1, [1]), (2, [2]), (4, [2, 4]), (5, [2, 5])]


def test_states_asked_are_the_sleeps_the_last_row_and_with_locality_the_row_before_each_round():
    rows = [{"origin": o} for o in ("write", "write", "sleep", "sleep", "write", "sleep", "write")]
    assert ledger_replay.probed(rows) == {2, 3, 5, 6}
    assert ledger_replay.probed(rows, before_sleeps=True) == {1, 2, 3, 4, 5, 6}


def strangers_kept(lm, home) -> int:
    """Osric's questions answered by the memory itself (its own weights composition) against the unedited model."""
    from rose_memory.eval.generate import encode, render
    from rose_memory.eval.metrics import same_start
    from rose_memory.generate import generate_ids

    asks = [encode(lm, render(lm, q.format("Osric"), True), True) for q in SUBJECTS[2]["facts"][0]["questions"]]
    before = generate_ids(lm, asks, max_new_tokens=8)
    with ParametricMemory(home) as mem:
        after = generate_ids(mem.lm, asks, max_new_tokens=8)
    return sum(same_start(b, a) for b, a in zip(before, after))


def test_replay_rebuilds_the_memory_and_leaves_the_model_as_it_was(tmp_path, tiny_dir):
    home = tiny_home(tmp_path / "home", tiny_dir)
    with ParametricMemory(home) as mem:
        mem.write("Aurelio", [("lives in the city of", "Warsaw")])
        mem.write("Liora", [("has a pet", "ferret")])
        live = sorted(mem.live)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in SUBJECTS))
    from rose_memory.model import load_cached

    lm = load_cached(str(tiny_dir))
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    out = ledger_replay.replay(str(home), str(data), model=str(tiny_dir), locality=True)
    assert [s["row"] for s in out] == [live[-1]] and out[0]["live"] == len(live)  # no sleep: the last state only
    assert set(out[0]["recall"]) == {"Aurelio", "Liora"}
    kept, asked = out[0]["strangers"]  # the never-written subject's two questions, asked as the memory answers them
    assert asked == 2 and kept == strangers_kept(lm, home)
    assert all(m["efficacy"][1] == 1 and m["instruction"][1] == 1 for m in out[0]["recall"].values())
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, before[n]), n  # exactly: later tests in the process share this cached model
