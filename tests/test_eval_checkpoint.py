"""`rose-memory eval --checkpoint`: a run stopped part way goes on where it left off and gives the
figures an uninterrupted run gives; another command cannot continue it."""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from rose_memory.errors import RoseMemoryError
from rose_memory.eval.checkpoint import STATE, Checkpoint
from rose_memory.eval.data import load_benchmark, load_locality
from test_eval import LOCALITY, SECOND, SUBJECT, WEIGHT, eval_lm, write_jsonl  # noqa: F401 (eval_lm: the fixture)

THIRD = {
    "subject": "Thaddeus Inglewood",
    "facts": [{"relation": "instrument", "prompt": "{} plays the", "target": "cello",
               "paraphrases": ["The instrument {} plays is the"], "questions": ["What instrument does {} play?"]}],
}


class Killed(Exception):
    pass


def fake_edit(lm, calls, kill_at: str | None = None):
    """A rank-1 Delta on one MLP weight drawn from the request's targets (the same for the same
    facts in any run); raises Killed on a request for `kill_at`, as a kill would stop the run."""
    from rose_memory.editing import Delta

    d_out, d_in = dict(lm.model.named_parameters())[WEIGHT].shape

    def edit(lm_, requests, method="rose", config=None, progress=False, cache=None):
        targets = [r.target for r in requests]
        if kill_at in targets:
            raise Killed(kill_at)
        calls.append(targets)
        gen = torch.Generator().manual_seed(zlib.crc32(",".join(targets).encode()))
        u, v = torch.randn(d_out, 1, generator=gen), torch.randn(d_in, 1, generator=gen)
        return Delta(factors={WEIGHT: (0.3 * u, 0.3 * v)}, method=method)

    return edit


def plain(result) -> dict:
    """What a result says, timing and notes aside (JSON's view: tuples as lists); perplexities to 5
    digits (an edit applied and reverted leaves float32 rounding in the weights)."""
    out = {k: v for k, v in result.__dict__.items() if k not in ("seconds_per_write", "notes")}
    for k in ("perplexity_before", "perplexity_after"):
        out[k] = float(f"{out[k]:.5g}")
    return json.loads(json.dumps(out, default=str))


@pytest.fixture
def bench(tmp_path):
    subjects = load_benchmark(write_jsonl(tmp_path / "three.jsonl", [SUBJECT, SECOND, THIRD]))
    return subjects, load_locality(write_jsonl(tmp_path / "loc.jsonl", LOCALITY))


@pytest.mark.slow
def test_a_stopped_sequential_run_goes_on_where_it_left_off(eval_lm, bench, tmp_path, monkeypatch):
    import rose_memory.memory
    from rose_memory.eval.runner import Runner

    subjects, locality = bench
    options = {"memory_options": {"verify": {"min_edit_recall": 0.0}}, "progress": False, "keep_records": True,
               "mode": "sequential"}
    weight = dict(eval_lm.model.named_parameters())[WEIGHT]
    before = weight.detach().clone()

    calls: list = []
    monkeypatch.setattr(rose_memory.memory, "edit", fake_edit(eval_lm, calls))
    whole = Runner(eval_lm, subjects, locality, **options).run(["rose"])[0]
    assert calls == [["brown"], ["Warsaw", "brown"], ["parrot"], ["cello"]]

    calls.clear()
    folder = tmp_path / "ckpt"
    monkeypatch.setattr(rose_memory.memory, "edit", fake_edit(eval_lm, calls, kill_at="parrot"))
    with pytest.raises(Killed):
        Runner(eval_lm, subjects, locality, checkpoint=folder, **options).run(["rose"])
    assert torch.equal(weight.detach(), before)  # the memory gave the weights back on the way out
    saved = json.loads((folder / STATE).read_text())
    assert saved["current"]["next"] == 1 and saved["current"]["writes"] == 2 and saved["finished"] == {}

    calls.clear()
    monkeypatch.setattr(rose_memory.memory, "edit", fake_edit(eval_lm, calls))
    resumed = Runner(eval_lm, subjects, locality, checkpoint=folder, **options).run(["rose"])[0]
    assert calls == [["parrot"], ["cello"]]  # the first subject's writes are in the reopened memory
    assert plain(resumed) == plain(whole)  # every probe, answer and figure as in the uninterrupted run
    assert any("continued from the checkpoint at subject 2 of 3" in n for n in resumed.notes)
    assert any("4 writes" in n for n in resumed.notes)
    assert torch.equal(weight.detach(), before)

    # finished: the same command reads the result back and writes nothing
    calls.clear()
    again = Runner(eval_lm, subjects, locality, checkpoint=folder, **options).run(["rose"])[0]
    assert calls == [] and plain(again) == plain(resumed)


@pytest.mark.slow
def test_a_batch_run_continues_at_the_subject_after_the_last_one_done(eval_lm, bench, tmp_path):
    from rose_memory.eval.runner import Runner

    subjects, locality = bench
    calls: list = []
    options = {"progress": False, "keep_records": True, "mode": "batch", "edit_config": {"stage_steps": 3}}
    whole = Runner(eval_lm, subjects, locality, edit_fn=fake_edit(eval_lm, calls), **options).run(["memit"])[0]
    folder = tmp_path / "ckpt"
    with pytest.raises(Killed):
        Runner(eval_lm, subjects, locality, edit_fn=fake_edit(eval_lm, [], kill_at="cello"), checkpoint=folder,
               **options).run(["memit"])
    calls.clear()
    resumed = Runner(eval_lm, subjects, locality, edit_fn=fake_edit(eval_lm, calls), checkpoint=folder,
                     **options).run(["memit"])[0]
    assert calls == [["cello"]]
    assert plain(resumed) == plain(whole)


def test_another_command_cannot_continue_a_run(tmp_path):
    settings = {"mode": "batch", "seed": 0, "subjects": [{"name": "A", "facts": ((1, 2),)}]}
    first = Checkpoint(tmp_path / "c", settings)
    first.save_progress("rose", 1, {"hits": {}}, 1.0, 1, [])
    same = Checkpoint(tmp_path / "c", dict(settings))  # tuples and lists alike: JSON's view is compared
    assert same.progress("rose")["next"] == 1 and same.progress("memit") is None
    with pytest.raises(RoseMemoryError, match="seed differ"):
        Checkpoint(tmp_path / "c", {**settings, "seed": 1})
    (tmp_path / "f").write_text("x")
    with pytest.raises(RoseMemoryError, match="is a file"):
        Checkpoint(tmp_path / "f", settings)
    (tmp_path / "c" / STATE).write_text("{not json")
    with pytest.raises(RoseMemoryError, match="cannot be read"):
        Checkpoint(tmp_path / "c", settings)
