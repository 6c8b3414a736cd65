"""benchmarks/variant_grid.py: variants parsed as the eval's --set, results paired per question."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import variant_grid  # noqa: E402


def test_a_variant_is_a_name_and_checked_settings():
    assert variant_grid.parse_variant("default") == ("default", {})
    assert variant_grid.parse_variant("r:relation_question=restate,flat_noise=0.3") == (
        "r", {"relation_question": "restate", "flat_noise": 0.3})
    with pytest.raises(Exception, match="stage_stepz"):
        variant_grid.parse_variant("bad:stage_stepz=3")


def _job(folder: Path, variant: str, seed: int, subject: int, hits: list[bool]) -> None:
    records = [{"method": "rose", "subject": f"S{subject}", "metric": "instruction", "prompt": f"q{i}",
                "answer": "", "target": "x", "hit": h} for i, h in enumerate(hits)]
    records.append({"method": "rose", "subject": f"S{subject}", "metric": "name_fidelity", "prompt": "q0",
                    "answer": "", "target": "x", "hit": None})   # not applicable: not counted
    (folder / f"{variant}_{seed}_{subject}.json").write_text(json.dumps(
        {"variant": variant, "seed": seed, "subject": subject, "seconds_per_write": 2.0, "records": records}))


def test_variants_are_compared_on_the_jobs_all_finished_question_by_question(tmp_path):
    _job(tmp_path, "a", 0, 0, [True, True, False, False])
    _job(tmp_path, "b", 0, 0, [True, False, True, True])
    _job(tmp_path, "a", 1, 0, [True, True, True, True])     # b never finished this one: left out
    s = variant_grid.summarise(tmp_path, ["a", "b"])
    assert s["jobs_done"] == 3 and s["jobs_compared"] == 1
    assert s["variants"]["a"]["metrics"]["instruction"] == 0.5
    assert s["variants"]["b"]["metrics"]["instruction"] == 0.75
    assert s["variants"]["b"]["n_probes"]["name_fidelity"] == 0
    assert s["variants"]["b"]["instruction_vs_first"] == {"both": 1, "only_this": 2, "only_first": 1}


def test_a_continued_grid_must_ask_for_the_grid_it_was_planned_with(tmp_path):
    import argparse

    args = argparse.Namespace(data="d.jsonl", locality="l.jsonl", seeds=[0, 1], model=None, dtype="float32",
                              variants=[("default", {}), ("noise", {"flat_noise": 0.3})])
    variant_grid.check_plan(tmp_path, variant_grid.plan_record(args))      # first run: written
    variant_grid.check_plan(tmp_path, variant_grid.plan_record(args))      # the same grid: continues
    args.variants = [("default", {}), ("noise", {"flat_noise": 0.5})]
    args.seeds = [0]
    with pytest.raises(SystemExit, match="other seeds, variants"):
        variant_grid.check_plan(tmp_path, variant_grid.plan_record(args))
