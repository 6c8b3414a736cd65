"""benchmarks/question_ceiling.py: the diagnostic's extra rows are the file's questions, replied to as RoSE's rows are."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import question_ceiling  # noqa: E402

from rose_memory.editing.config import config_for  # noqa: E402
from rose_memory.editing.rose import target_rows  # noqa: E402
from rose_memory.facts import EditRequest  # noqa: E402

QUESTIONS = ["Where does {} live?", "Which city is {} living in?"]


def _data(tmp_path: Path) -> Path:
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"subject": "Larkspur Quennell", "facts": [
        {"relation": "city", "prompt": "{} lives in the city of", "target": "Lisbon",
         "paraphrases": [], "questions": QUESTIONS}]}) + "\n")
    return f


@pytest.mark.parametrize("relation", [False, True])
def test_one_row_per_question_replying_with_the_fact(lm, tmp_path, relation):
    patched = question_ceiling.with_question_rows(question_ceiling.questions_of(str(_data(tmp_path))))
    req = EditRequest(subject="Larkspur Quennell", prompt="{} lives in the city of", target="Lisbon")
    cfg = config_for(lm.model, {"reply_relation": relation})
    own, rows = target_rows(lm, req, 3, cfg), patched(lm, req, 3, cfg)
    assert [r.ids for r in rows[:len(own)]] == [r.ids for r in own]        # RoSE's own rows unchanged
    tok = lm.tokenizer
    for row, q in zip(rows[len(own):], QUESTIONS, strict=True):
        text = tok.decode(row.ids)
        assert q.format("Larkspur Quennell") in text and row.group == 3 and len(row.lookups) == 2
        assert text.endswith("<|im_start|>assistant\nLarkspur Quennell lives in the city of Lisbon")
        scored = tok.decode([row.ids[p + 1] for p in row.scored]).strip()
        assert scored == ("Larkspur Quennell lives in the city of Lisbon" if relation else "Larkspur Quennell Lisbon")
    other = EditRequest(subject="Larkspur Quennell", prompt="{} works as a", target="dentist")
    assert len(patched(lm, other, 0, cfg)) == len(target_rows(lm, other, 0, cfg))   # no questions: no rows


def test_a_missing_file_is_refused_before_anything_runs(tmp_path, capsys):
    assert question_ceiling.main([str(tmp_path / "nope.jsonl"), "--methods", "rose"]) == 2
    assert "cannot read questions" in capsys.readouterr().err
