"""benchmarks/locality_misses.py: each missed locality probe sorted by kind, two methods paired."""

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import locality_misses  # noqa: E402

SUBJECTS = [
    {"subject": "Ada Quill", "facts": [{"relation": "city", "prompt": "{} lives in the city of", "target": "Warsaw",
                                        "paraphrases": ["{} has a home in"], "questions": ["Where does {} live?"]}]},
    {"subject": "Bo Renn", "facts": [{"relation": "food", "prompt": "{}'s favorite food is", "target": "falafel",
                                      "paraphrases": ["{} loves to eat"], "questions": ["What does {} eat?"]}]},
]


def _row(method, prompt, before, after):
    return {"method": method, "subject": "Ada Quill", "metric": "locality", "prompt": prompt,
            "answer": after, "target": before, "hit": before == after}


def test_misses_are_sorted_by_kind_and_two_methods_paired(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in SUBJECTS))
    q = "<|im_start|>user\nWhat does Bo Renn eat?<|im_end|>\n<|im_start|>assistant\n"
    rows = [
        _row("a", q, "Bo Renn eats rice.", "Bo Renn eats rice in Warsaw."),     # this subject's object
        _row("a", q + " ", "Bo Renn eats rice.", "Bo Ren eats rice."),           # the name garbled
        _row("a", q + "  ", "Bo Renn eats rice daily.", "Bo Renn eats bread."),  # parts at word 3
        _row("a", q + "   ", "The food of Bo Renn.", "Bo Renn eats."),           # parts at once
        _row("a", "The capital of France is", " Paris.", " Paris, France."),     # the locality file
        _row("b", q, "Bo Renn eats rice.", "Bo Renn eats rice."),
        _row("b", q + " ", "Bo Renn eats rice.", "Bo Renn eats rice."),
        _row("b", q + "  ", "Bo Renn eats rice daily.", "Bo Renn eats rice daily."),
        _row("b", q + "   ", "The food of Bo Renn.", "Bo Renn eats."),
        _row("b", "The capital of France is", " Paris.", " Paris."),
        {"method": "a", "subject": "Ada Quill", "metric": "instruction", "prompt": q, "answer": "", "target": "x",
         "hit": False},
    ]
    path = tmp_path / "answers.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)

    out = locality_misses.summarize(locality_misses.read_answers(str(path)), str(data), ("b", "a"))

    assert out["methods"]["a"] == {"probes": 5, "kept": 0, "misses": {
        "leak": 1, "name respelt": 1, "diverges at word 3+": 1, "diverges at word 0": 1, "locality file": 1}}
    assert out["methods"]["b"]["kept"] == 4 and out["methods"]["b"]["misses"] == {"diverges at word 0": 1}
    assert out["pair"]["kept by b only"] == 4 and out["pair"]["kept by a only"] == 0
    assert out["pair"]["missed by both"] == 1
    assert out["pair"]["new misses of a"] == {
        "leak": 1, "name respelt": 1, "diverges at word 3+": 1, "locality file": 1}


def test_locality_by_state_in_the_run_order(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in SUBJECTS))
    q = "<|im_start|>user\nWhat does Bo Renn eat?<|im_end|>\n<|im_start|>assistant\n"
    first = [_row("m", q, "Bo Renn eats rice.", "Bo Renn eats rice."),
             _row("m", "The capital of France is", " Paris.", " Paris.")]
    # the state after Bo Renn's writes: no unedited subject left, only the locality file's prompt
    second = [dict(_row("m", "The capital of France is", " Paris.", " Paris, France."), subject="Bo Renn")]
    out = locality_misses.summarize(first + second, str(data), states=True)
    assert out["methods"]["m"]["by state"] == [
        {"after": "Ada Quill", "kept": 2, "probes": 2, "locality": 1.0, "file kept": 1, "file probes": 1},
        {"after": "Bo Renn", "kept": 0, "probes": 1, "locality": 0.0, "file kept": 0, "file probes": 1}]


def test_misses_by_the_person_asked_and_how_often_each_prompt_misses(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in SUBJECTS))
    q = "<|im_start|>user\nWhat does Bo Renn eat?<|im_end|>\n<|im_start|>assistant\n"
    rows = [_row("m", q, "Bo Renn eats rice.", "Bo Ren eats rice."),            # missed after Ada's edit
            _row("m", q + " ", "Bo Renn eats rice.", "Bo Renn eats rice."),
            _row("m", "The capital of France is", " Paris.", " Paris.")]
    # after Bo Renn's edit: the locality file's prompt misses, and a question about Ada Quill
    rows += [dict(_row("m", "The capital of France is", " Paris.", " Paris, France."), subject="Bo Renn"),
             dict(_row("m", "Where does Ada Quill live?", "In a house.", "In a house."), subject="Bo Renn")]
    out = locality_misses.summarize(rows, str(data), asked=True)["methods"]["m"]["by asked"]
    assert out["asked"] == [{"asked": "Bo Renn", "missed": 1, "probes": 2},
                            {"asked": "locality file", "missed": 1, "probes": 2},
                            {"asked": "Ada Quill", "missed": 0, "probes": 1}]
    # the file's prompt missed in 1 of its 2 states, the first question in its only one
    assert (out["prompts missed in no state"], out["in some"], out["in at least half"]) == (2, 0, 2)
    assert out["share of the misses from those"] == 1.0
