"""benchmarks/per_fact.py: per fact and per subject figures of one method of an eval run."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import per_fact  # noqa: E402

CHAT = "<chat>{}</chat>"


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "d.jsonl"
    facts = [{"relation": "city", "prompt": "{} lives in the city of", "target": "Lisbon", "paraphrases": [],
              "questions": ["Where does {} live?", "Which city is {} in?"]},
             {"relation": "pet", "prompt": "{} has a pet", "target": "parrot", "paraphrases": [],
              "questions": ["What pet does {} have?"]}]
    data.write_text(json.dumps({"subject": "Ana Vell", "facts": facts}) + "\n"
                    + json.dumps({"subject": "Bo Tarn", "facts": facts[:1]}) + "\n")
    m = "rose+consolidate"

    def row(subject, metric, prompt, target, hit, method=m):
        return {"method": method, "subject": subject, "metric": metric, "prompt": prompt, "answer": "", "target": target, "hit": hit}

    rows = [row("Ana Vell", "efficacy", "Ana Vell lives in the city of", "Lisbon", True),
            row("Ana Vell", "instruction", CHAT.format("Where does Ana Vell live?"), "Lisbon", True),
            row("Ana Vell", "confusion", CHAT.format("Where does Ana Vell live?"), ["parrot"], True),
            row("Ana Vell", "instruction", CHAT.format("Which city is Ana Vell in?"), "Lisbon", False),
            row("Ana Vell", "confusion", CHAT.format("Which city is Ana Vell in?"), ["parrot"], False),
            row("Ana Vell", "efficacy", "Ana Vell has a pet", "parrot", False),
            row("Ana Vell", "instruction", CHAT.format("What pet does Ana Vell have?"), "parrot", True),
            row("Ana Vell", "confusion", CHAT.format("What pet does Ana Vell have?"), ["Lisbon"], False),
            row("Ana Vell", "locality", "The capital of France is", "Paris", True),
            row("Ana Vell", "locality", CHAT.format("Where does Bo Tarn live?"), "x", False),
            row("Bo Tarn", "instruction", CHAT.format("Where does Bo Tarn live?"), "Lisbon", True, method="rose")]
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sleeps = tmp_path / "sleeps.json"
    sleeps.write_text(json.dumps([{"subject": "Ana Vell", "kept": True, "canary": [{"scale": 1.0}, {"scale": 0.75}],
                                   "facts": [{"object": "Lisbon", "before": {"held_out": 0.5}, "after": {"held_out": 1.0}},
                                             {"object": "parrot", "before": {"held_out": 0.0}, "after": {"held_out": 0.0}}]}]))
    return data, answers, sleeps


def test_each_fact_and_subject_of_the_method(tmp_path, capsys):
    data, answers, sleeps = _files(tmp_path)
    assert per_fact.main([str(answers), "--data", str(data), "--sleeps", str(sleeps)]) == 0
    out = capsys.readouterr().out
    assert "| Ana Vell | … lives in the city of Lisbon | 1 of 1 | 1 of 2 | 1 | 0.5 -> 1.0 | 0.75 |" in out
    assert "|  | … has a pet parrot | 0 of 1 | 1 of 1 | 0 | 0.0 -> 0.0 | 0.75 |" in out
    assert "| | locality: 1 of 2 missed |" in out
    assert "Bo Tarn" not in out      # only the subjects this method wrote
    assert "Questions 2 of 3, confused 1; locality 1 of 2 missed." in out


def test_a_method_the_file_lacks_is_named(tmp_path, capsys):
    data, answers, _ = _files(tmp_path)
    assert per_fact.main([str(answers), "--data", str(data), "--method", "memit"]) == 2
    assert "no answers of 'memit'" in capsys.readouterr().err
    assert per_fact.main([str(tmp_path / "missing.jsonl"), "--data", str(data)]) == 2
