"""benchmarks/transfer_overlap.py: a split's questions the transfer set makes word for word, recall split by them."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import transfer_overlap  # noqa: E402

SUBJECT = {"subject": "Ada Quill", "facts": [
    {"relation": "color", "prompt": "{}'s favorite color is", "target": "blue", "paraphrases": ["{} likes"],
     "questions": ["What is {}'s favorite color?", "Which color does {} like best?", "Who is {}?"]}]}


def test_questions_the_transfer_set_makes_are_counted_and_recall_split_by_them(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(SUBJECT) + "\n")
    chat = "<|im_start|>system\nFacts.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    rows = [("rose", "What is Ada Quill's favorite color?", True),
            ("rose", "Which color does Ada Quill like best?", False),
            ("rose", "Who is Ada Quill?", True),                      # an open request: made too
            ("in-context", "Which color does Ada Quill like best?", True)]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"method": m, "subject": "Ada Quill", "metric": "instruction",
                                           "prompt": chat.format(q), "answer": "", "target": "blue", "hit": h}) + "\n"
                               for m, q, h in rows))

    out = transfer_overlap.summarize(str(data), [str(answers)])

    assert out["questions"] == 3 and out["made by the transfer set"] == 2
    assert out["those questions"] == ["What is Ada Quill's favorite color?", "Who is Ada Quill?"]
    run = out["runs"][str(answers)]
    assert run["rose, made"] == {"hits": 2, "of": 2, "recall": 1.0}
    assert run["rose, not made"] == {"hits": 0, "of": 1, "recall": 0.0}
    assert run["in-context, not made"] == {"hits": 1, "of": 1, "recall": 1.0}
    assert "in-context, made" not in run
