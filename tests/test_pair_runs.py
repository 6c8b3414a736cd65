"""benchmarks/pair_runs.py: two runs of one method compared probe by probe."""

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pair_runs  # noqa: E402


def _write(path, rows):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _r(subject, metric, prompt, hit, method="rose"):
    return {"method": method, "subject": subject, "metric": metric, "prompt": prompt, "answer": "", "target": "x",
            "hit": hit}


def test_probes_are_paired_on_the_subjects_both_runs_wrote(tmp_path, capsys):
    a = [_r("Ada", "locality", "p1", True), _r("Ada", "locality", "p2", False), _r("Ada", "instruction", "q", False),
         _r("Bo", "locality", "p1", True),                  # a subject B never wrote: left out
         _r("Ada", "locality", "p1", False, method="memit")]  # another method: left out
    b = [_r("Ada", "locality", "p1", False), _r("Ada", "locality", "p2", True), _r("Ada", "instruction", "q", True)]
    _write(tmp_path / "a.jsonl.gz", a)
    _write(tmp_path / "b.jsonl", b)
    pair_runs.main([str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl"), "--method", "rose"])
    out = json.loads(capsys.readouterr().out)
    assert out["locality"] == {"probes": 2, "a": 1, "b": 1, "a only": 1, "b only": 1}
    assert out["instruction"] == {"probes": 1, "a": 0, "b": 1, "a only": 0, "b only": 1}
