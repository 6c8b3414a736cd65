"""The sleep's canary on the tiny model: it measures what the sleep delta moves, not the wake edit."""

import torch

from rose_memory.arch import spec_for
from rose_memory.editing.delta import Delta
from rose_memory.facts import EditRequest
from rose_memory.generate import generate_ids
from rose_memory.model import load_model
from rose_memory.sleep import SleepConfig, consolidate_subject, scaled
from rose_memory.sleep.people import made_up_names
from rose_memory.sleep.teacher import canary_prompts
from rose_memory.sleep.transfer import transfer_set

SMALL = {"model_questions": 1, "samples": 1, "answer_tokens": 4, "other_names": 2, "person_questions": 1,
         "generic_negatives": 1, "canary_names": 4, "gate_tokens": 4, "delta_scales": [1.0], "steps": 0}


REQS = [EditRequest(subject="Aurelio Brandt", prompt="{} lives in the city of", target="Warsaw")]


def _loud_wake(tiny_dir, cfg):
    """The tiny model, a loud random wake edit on block 0's MLP output, the `set_weights` callback
    the sleep drives, and the canary answers before and with the wake edit (left at scale 0)."""
    torch.manual_seed(0)
    lm = load_model(str(tiny_dir))
    name = spec_for(lm.model).mlp_out_weight(0)
    w = dict(lm.model.named_parameters())[name]
    gen = torch.Generator().manual_seed(1)
    wake = Delta(factors={name:
                          (torch.randn(w.shape[0], 4, generator=gen), torch.randn(w.shape[1], 4, generator=gen))}, method="test")
    held = []

    def set_weights(scales, delta):
        while held:
            held.pop().revert(lm.model)
        if scales and scales[0]:
            held.append(scaled(wake, scales[0]).apply(lm.model))
        if delta is not None:
            held.append(delta.apply(lm.model))

    facts, _ = transfer_set(lm, REQS, cfg)
    canary = canary_prompts(lm, facts, made_up_names(cfg.other_names + cfg.canary_names, cfg.seed,
                                                      avoid=REQS[0].subject)[cfg.other_names:], cfg)
    before = generate_ids(lm, canary, max_new_tokens=8)
    set_weights([1.0], None)
    after_wake = generate_ids(lm, canary, max_new_tokens=8)
    set_weights([0.0], None)
    return lm, set_weights, before, after_wake


def test_a_sleep_that_moves_nothing_keeps_every_canary_answer_even_where_the_wake_edit_moved_them(tiny_dir):
    """A loud wake edit changes the canary answers; a sleep delta of zero (no training steps) must
    still read as keeping all of them, since the reference is the memory with its wake edit."""
    cfg = SleepConfig(**SMALL)
    lm, set_weights, before, after_wake = _loud_wake(tiny_dir, cfg)
    assert any(a != b for a, b in zip(before, after_wake))        # the wake edit alone moves canary answers

    out = consolidate_subject(lm, REQS, [[0]], set_weights, cfg)
    assert out.canary == [{"scale": 1.0, "canary_same": 1.0}]
    set_weights([0.0], None)


def test_held_to_the_answers_before_the_wake_edit_the_canary_passes_what_the_wake_edit_alone_keeps(tiny_dir):
    """keep_reference="before_wake": the canary compares with the model before the wake edit, so it
    reports what the wake edit alone keeps (delta scale 0) and passes a sleep delta that keeps as many."""
    cfg = SleepConfig(**SMALL, keep_reference="before_wake")
    lm, set_weights, before, after_wake = _loud_wake(tiny_dir, cfg)
    kept = round(sum(a == b for a, b in zip(before, after_wake)) / len(before), 3)
    assert kept < 1.0                                               # the wake edit alone moves canary answers

    out = consolidate_subject(lm, REQS, [[0]], set_weights, cfg)
    assert out.canary == [{"scale": 0.0, "canary_same": kept, "wake_alone": True},
                          {"scale": 1.0, "canary_same": kept}]
    assert "people it never saw" not in (out.reason or "")          # a zero delta moves nothing beyond the wake edit
    set_weights([0.0], None)
