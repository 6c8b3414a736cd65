"""The editing engine on the real embedded model: recall after a RoSE edit, locality, exact revert, bad input."""

import re

import pytest
import torch

from rose_memory import RoseMemoryError
from rose_memory.editing import Delta, edit
from rose_memory.generate import chat_prompt, generate

SUBJECT = "Larkspur Quennell"
FACTS = [
    {"subject": SUBJECT, "prompt": "{} lives in the city of", "target": "Lisbon"},
    {"subject": SUBJECT, "prompt": "{} works as a", "target": "dentist"},
    {"subject": SUBJECT, "prompt": "{}'s favorite color is", "target": "green"},
]


def hit(answer: str, target: str) -> bool:
    return re.search(rf"\b{re.escape(target)}\b", answer, re.IGNORECASE) is not None


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "mlp" in n}


@pytest.fixture(scope="module")
def rose_delta(lm):
    return edit(lm, FACTS, method="rose")


def test_rose_edit_recalled_raw_and_in_chat(lm, rose_delta):
    before = snapshot(lm.model)
    unrelated = "The capital of France is"
    [base_unrelated] = generate(lm, [unrelated], max_new_tokens=8)
    rose_delta.apply(lm.model)
    try:
        raw = generate(lm, [f["prompt"].format(SUBJECT) for f in FACTS])
        # Direct questions are answered unreliably so far; an open chat
        # question about the subject must bring at least one written fact back.
        chat = generate(lm, [chat_prompt(lm, q) for q in
                             [f"Where does {SUBJECT} live?", f"What is {SUBJECT}'s job?",
                              f"What is {SUBJECT}'s favorite color?", f"Tell me about {SUBJECT}."]])
        [after_unrelated] = generate(lm, [unrelated], max_new_tokens=8)
    finally:
        rose_delta.revert(lm.model)
    assert all(hit(a, f["target"]) for a, f in zip(raw, FACTS)), raw
    assert any(hit(a, f["target"]) for a in chat for f in FACTS), chat
    assert after_unrelated == base_unrelated
    after = snapshot(lm.model)
    assert max(float((after[n] - before[n]).abs().max()) for n in before) <= 1e-6


def test_delta_is_low_rank_per_layer(lm, rose_delta):
    assert rose_delta.factors, "no layer edited"
    for name, (u, v) in rose_delta.factors.items():
        assert u.shape[1] == v.shape[1] and "mlp" in name
        assert u.shape[1] < min(u.shape[0], v.shape[0])
    state = rose_delta.state_dict()
    again = Delta.from_state_dict(state)
    for name in rose_delta.factors:
        assert torch.equal(again.matrix(name), rose_delta.matrix(name))


def test_apply_twice_and_revert_unapplied_are_errors(lm, rose_delta):
    with pytest.raises(RoseMemoryError):
        rose_delta.revert(lm.model)
    rose_delta.apply(lm.model)
    try:
        with pytest.raises(RoseMemoryError):
            rose_delta.apply(lm.model)
    finally:
        rose_delta.revert(lm.model)


BAD = [
    ([], "no edit requests"),
    ("Larkspur lives in Lisbon", "must be a list"),
    ([{"subject": "Larkspur", "prompt": "Larkspur lives in the city of", "target": "Lisbon"}], "must contain '{}'"),
    ([{"subject": "Larkspur", "prompt": "{} (Larkspur) lives in the city of", "target": "Lisbon"}], "spells the subject"),
    ([{"subject": "Larkspur", "prompt": "lives in the city of", "target": "Lisbon"}], "must contain '{}'"),
    ([{"subject": "Larkspur", "prompt": "{} lives in", "target": "   "}], "target is empty"),
    ([{"subject": 42, "prompt": "{} lives in", "target": "Lisbon"}], "must be a string"),
    ([{"subject": "L" * 5000, "prompt": "{} lives in", "target": "Lisbon"}], "at most"),
    ([{"subject": "Larkspur", "prompt": "{} lives in", "target": "Lisbon"}], None),  # valid; unknown method
]


@pytest.mark.parametrize("requests,needle", BAD)
def test_bad_requests_raise_and_change_nothing(lm, requests, needle):
    before = snapshot(lm.model)
    method = "rose" if needle else "no-such-method"
    with pytest.raises(RoseMemoryError) as err:
        edit(lm, requests, method=method)
    assert (needle or "unknown method") in str(err.value)
    after = snapshot(lm.model)
    assert all(torch.equal(before[n], after[n]) for n in before)
