"""benchmarks/locality_floor.py: an edit's locality cost against random noise of its size."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import locality_floor  # noqa: E402

from rose_memory.editing.delta import Delta  # noqa: E402
from rose_memory.eval.data import load_benchmark, load_locality  # noqa: E402


def _files(tmp_path: Path) -> tuple[Path, Path]:
    rows = [{"subject": name, "facts": [{"relation": "city", "prompt": "{} lives in the city of", "target": city,
                                         "paraphrases": [], "questions": ["Where does {} live?"]}]}
            for name, city in (("Larkspur Quennell", "Lisbon"), ("Osric Tamberlane", "Oslo"), ("Mirela Dunst", "Rome"))]
    data, loc = tmp_path / "d.jsonl", tmp_path / "loc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loc.write_text(json.dumps({"prompt": "The capital of France is", "answer": "Paris"}) + "\n"
                   + json.dumps({"prompt": "What is the capital of Japan?", "answer": "Tokyo"}) + "\n")
    return data, loc


def test_noise_has_each_modules_rank_and_norm_and_follows_its_seed():
    g = torch.Generator().manual_seed(0)
    d = Delta(factors={"a": (torch.randn(6, 2, generator=g), torch.randn(4, 2, generator=g)),
                       "b": (torch.randn(5, 1, generator=g), torch.randn(3, 1, generator=g))})
    n1, n2, other = locality_floor.noise_like(d, 7), locality_floor.noise_like(d, 7), locality_floor.noise_like(d, 8)
    for name, (u, v) in d.factors.items():
        nu, nv = n1.factors[name]
        assert nu.shape == u.shape and nv.shape == v.shape
        assert torch.allclose(n1.matrix(name).norm(), d.matrix(name).norm(), rtol=1e-5)
        assert torch.equal(n1.matrix(name), n2.matrix(name))
        assert not torch.allclose(n1.matrix(name), other.matrix(name))
        assert not torch.allclose(n1.matrix(name), d.matrix(name))


def test_the_unedited_model_keeps_every_answer(lm, tmp_path):
    data, loc = _files(tmp_path)
    subjects = load_benchmark(str(data))
    asker = locality_floor.Asker(lm, subjects, subjects[0], load_locality(str(loc)))
    got = locality_floor.measured(lm, asker, [])
    assert got["locality"] == [4, 4]      # 2 locality prompts + the 2 other people's questions
    assert got["efficacy"][1] == 1 and got["instruction"][1] == 1


def test_a_write_and_noise_of_its_size(lm, tmp_path, capsys):
    data, loc = _files(tmp_path)
    out = tmp_path / "out.json"
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters() if "down_proj" in n}
    rc = locality_floor.main([str(data), "--locality", str(loc), "--subjects", "0", "--draws", "1",
                              "--set", "stage_steps=2", "--set", "joint_steps=2", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = {r["condition"]: r for r in report["runs"][0]["rows"]}
    assert set(rows) == {"write", "write x0.5", "noise(write)"}
    assert abs(rows["write x0.5"]["norm"] - rows["write"]["norm"] / 2) < 1e-3 * rows["write"]["norm"]
    assert abs(rows["noise(write)"]["norm"] - rows["write"]["norm"]) < 1e-3 * rows["write"]["norm"]
    assert all(r["locality"][1] == 4 for r in rows.values())
    assert {t["condition"] for t in report["totals"]} == set(rows)
    assert "| noise(write) |" in capsys.readouterr().out
    # every condition was put back bit for bit: the weights are the base model's again
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters() if n in before)


def test_bad_input_is_refused_before_the_model_loads(tmp_path, capsys):
    data, loc = _files(tmp_path)
    assert locality_floor.main([str(data), "--locality", str(loc), "--subjects", "0,5"]) == 2
    assert "--subjects must be within 0..2" in capsys.readouterr().err
    assert locality_floor.main([str(data), "--locality", str(loc), "--scales", "half"]) == 2
    assert "--scales" in capsys.readouterr().err
    assert locality_floor.main([str(data), "--locality", str(loc), "--set", "clamp_norm=0.5"]) == 2
    assert "unknown editing setting(s) clamp_norm" in capsys.readouterr().err


def test_the_sleep_path_on_the_tiny_model(tiny_dir, tmp_path, capsys):
    """--sleep runs the sleep on top of the write and says why one is refused; nothing stays applied."""
    from rose_memory.model import load_cached
    from rose_memory.tiny import TINY_EDIT

    data, loc = _files(tmp_path)
    out = tmp_path / "out.json"
    tiny = load_cached(str(tiny_dir))
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    args = [str(data), "--locality", str(loc), "--model", str(tiny_dir), "--subjects", "1", "--draws", "1",
            "--scales", "", "--sleep", "--json", str(out)]
    args += [a for k, v in TINY_EDIT.items() for a in ("--set", f"{k}={v}")]
    args += [a for kv in ("steps=2", "other_names=2", "canary_names=2", "generic_negatives=2", "model_questions=1",
                          "samples=1") for a in ("--sleep-set", kv)]
    assert locality_floor.main(args) == 0
    rows = {r["condition"]: r for r in json.loads(out.read_text())["runs"][0]["rows"]}
    assert {"write", "noise(write)", "write+sleep"} <= set(rows)
    sleep = rows["write+sleep"]
    assert isinstance(sleep.get("refused"), str) or sleep["locality"][1] == 4
    assert "Osric Tamberlane: write+sleep:" in capsys.readouterr().err
    assert all(torch.equal(p, before[n]) for n, p in tiny.model.named_parameters())
