"""benchmarks/value_delivery.py: the value answered with directly, and its delivery by the weight edit."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import value_delivery  # noqa: E402

from rose_memory.eval.metrics import hit  # noqa: E402

SUBJECT = "Larkspur Quennell"


def _data(tmp_path: Path) -> Path:
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"subject": SUBJECT, "facts": [
        {"relation": "city", "prompt": "{} lives in the city of", "target": "Lisbon",
         "paraphrases": [], "questions": ["Where does {} live?", "Which city is {} living in?"]}]}) + "\n")
    return f


def test_mention_ends_finds_every_form_of_the_name():
    forms = [[5, 6], [9, 6]]                  # e.g. "Ann Lee" at the start, " Ann Lee" inside text
    assert value_delivery.mention_ends([1, 5, 6, 2, 9, 6, 6], forms) == [2, 5]
    assert value_delivery.mention_ends([6, 1, 2], forms) == []


def test_one_subject_answered_both_ways_and_the_delivery_read(lm, tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = value_delivery.main([str(_data(tmp_path)), "--set", "stage_steps=2", "--set", "joint_steps=2",
                              "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    (subject,) = report["subjects"]
    assert subject["subject"] == SUBJECT and len(subject["questions"]) == 2
    for q in subject["questions"]:
        assert q["target"] == "Lisbon" and q["value"] and q["weights"]
        assert q["value_hit"] == hit(q["value"], "Lisbon") and q["weights_hit"] == hit(q["weights"], "Lisbon")
        # The weight edit moves block z's output at the question's mention along the wanted change.
        assert q["cosine"] > 0.5 and 0.5 < q["norm_ratio"] < 1.5
    assert 0 < subject["value_norm_over_hidden"] <= 0.75 + 1e-3     # the default clamp
    assert report["totals"] == {"questions": 2, "value": sum(q["value_hit"] for q in subject["questions"]),
                                "weights": sum(q["weights_hit"] for q in subject["questions"])}
    assert "delivered cosine" in capsys.readouterr().out


def test_bad_input_is_refused_before_the_model_loads(tmp_path, capsys):
    assert value_delivery.main([str(tmp_path / "nope.jsonl")]) == 2
    assert value_delivery.main([str(_data(tmp_path)), "--set", "bogus=1"]) == 2
    assert value_delivery.main([str(_data(tmp_path)), "--limit", "0"]) == 2
    assert value_delivery.main([str(_data(tmp_path)), "--json", str(tmp_path / "no" / "out.json")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "unknown editing setting" in err
    assert "--limit must be at least 1" in err and "create it first" in err
