"""benchmarks/leak_by_token.py: where a write moves other people's questions, token by token."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import leak_by_token  # noqa: E402


def _data(tmp_path: Path) -> Path:
    rows = [{"subject": name, "facts": [{"relation": "city", "prompt": "{} lives in the city of", "target": city,
                                         "paraphrases": [], "questions": ["Where does {} live?"]}]}
            for name, city in (("Larkspur Quennell", "Lisbon"), ("Osric Tamberlane", "Oslo"), ("Mirela Dunst", "Rome"))]
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_question_rows_mark_each_kind_of_token(lm):
    row, kinds = leak_by_token.question_row(lm, "Osric Tamberlane", "Where does Osric Tamberlane live?")
    assert row.lookups == list(range(len(row.ids))) and len(kinds) == len(row.ids)
    name = [row.ids[p] for p, k in enumerate(kinds) if k in ("name", "name_last")]
    assert lm.tokenizer.decode(name).strip() == "Osric Tamberlane"
    assert kinds.count("name_last") == 1 and kinds[-1] == "final" and "after" in kinds and kinds[0] == "template"


def test_the_write_moves_its_own_subject_most(lm, tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = leak_by_token.main([str(_data(tmp_path)), "--set", "stage_steps=2", "--set", "joint_steps=2",
                             "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["subject"] == "Larkspur Quennell" and len(report["layers"]) == 6
    for r in report["layers"].values():
        assert r["name"]["tokens"] > 0 and r["final"]["tokens"] == 2          # two other people asked once each
        assert r["own"] > max(r[k]["mean"] for k in leak_by_token.KINDS)      # the subject moves most
    assert "layer" in capsys.readouterr().out


def test_bad_input_is_refused_before_the_model_loads(tmp_path, capsys):
    assert leak_by_token.main([str(_data(tmp_path)), "--subject", "3"]) == 2
    assert "--subject must be within 0..2" in capsys.readouterr().err
