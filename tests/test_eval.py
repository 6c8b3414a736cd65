"""The benchmark runner: metric functions, input validation, and short runs on the real model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rose_memory.errors import RoseMemoryError
from rose_memory.eval import metrics as M
from rose_memory.eval.data import load_benchmark, load_locality
from rose_memory.eval.runner import METRICS, parse_methods

SUBJECT = {
    "subject": "Aurelio Sarkisian",
    "facts": [
        {"relation": "color", "prompt": "{}'s favorite color is", "target": "brown",
         "paraphrases": ["The color {} likes most is"],
         "questions": ["What is {}'s favorite color?", "Which color does {} like best?"]},
        {"relation": "city", "prompt": "{} lives in the city of", "target": "Warsaw",
         "paraphrases": ["The city where {} lives is"],
         "questions": ["Where does {} live?"]},
    ],
}
SECOND = {
    "subject": "Kaiya Yardley",
    "facts": [
        {"relation": "pet", "prompt": "{} has a pet", "target": "parrot",
         "paraphrases": ["The animal {} owns is a"], "questions": ["What pet does {} have?"]},
    ],
}
LOCALITY = [
    {"prompt": "The capital of France is", "answer": "Paris"},
    {"prompt": "What is the capital of Japan?", "answer": "Tokyo"},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ---- metric functions on hand-made answers ---------------------------------------------------

def test_hit_is_whole_word_and_case_insensitive():
    assert M.hit(" Paris, of course.", "Paris")
    assert M.hit("I think PARIS", "paris")
    assert not M.hit("a Parisian cafe", "Paris")
    assert not M.hit("Sparis", "Paris")
    assert M.hit("She loves ice\ncream a lot", "ice cream")
    assert not M.hit("ice-creamery", "ice cream")
    assert M.hit("He codes in C++ daily", "C++")
    assert not M.hit("anything", "  ")


def test_confusion_names_another_fact_of_the_subject():
    others = ("falafel", "Warsaw")
    assert M.confused("His favorite color is Warsaw.", "brown", others)
    assert not M.confused("His favorite color is brown.", "brown", others)
    assert not M.confused("He lives in Warsawa", "brown", others)  # not a whole word
    # the own target containing another target is not a confusion
    assert not M.confused("He loves ice cream", "ice cream", ("cream",))
    assert M.confused("He loves ice cream and cream", "ice cream", ("cream",))
    # another fact with the same target is not a confusion
    assert not M.confused("Lisbon", "Lisbon", ("lisbon",))


def test_locality_compares_the_first_eight_tokens():
    before = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert M.same_start(before, [1, 2, 3, 4, 5, 6, 7, 8, 99, 99])
    assert not M.same_start(before, [1, 2, 3, 4, 5, 6, 7, 0])
    assert M.same_start([1, 2], [1, 2])  # both ended early, identically
    assert not M.same_start([1, 2], [1, 2, 3])  # one ended early
    assert M.same_start(" Paris. The", " Paris. The")  # strings compare too (re-scoring)


def test_name_fidelity_probe():
    assert M.name_fidelity_probe("Aurelio Sarkisian is a chef.", "Aurelio Sarkisian") is True
    assert M.name_fidelity_probe("aurelio sarkisian likes brown", "Aurelio Sarkisian") is True
    assert M.name_fidelity_probe("Aurelio Sarkissian is a chef.", "Aurelio Sarkisian") is False
    assert M.name_fidelity_probe("Aurelio likes brown.", "Aurelio Sarkisian") is False
    assert M.name_fidelity_probe("He likes brown.", "Aurelio Sarkisian") is None


def test_n_gram_entropy_matches_memit_definition():
    # "a b a b": bigrams ab,ba,ab -> H2 = h(1/3); trigrams aba,bab -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    expected = (h2 * 2 / 3 + 1.0 * 4 / 3) / 2
    assert M.compute_n_gram_entropy("a b a b") == pytest.approx(expected)
    varied = "the cat sat on the mat while a dog slept near the door"
    repeated = "the cat the cat the cat the cat the cat the cat"
    assert M.compute_n_gram_entropy(varied) > M.compute_n_gram_entropy(repeated)
    assert M.compute_n_gram_entropy("") == 0.0
    assert M.fluency_ratio([varied, repeated], [varied, repeated]) == pytest.approx(1.0)
    assert M.fluency_ratio([repeated], [varied]) < 1.0


def test_a_sleep_superseded_by_a_later_write_counts_as_kept():
    """Sequential mode reads its sleeps from the memory's ledger: a sleep applied and later superseded
    (a write about the same subject carried its facts into a new wake edit) or consolidated (a later
    sleep replaced it) ran and was kept; only a failed one was refused."""
    from rose_memory.eval.runner import ledger_sleeps

    def row(i, origin, status, reason=None, into=None):
        return {"id": i, "origin": origin, "status": status, "reason": reason, "subject": "A", "consolidated_into": into,
                "metrics": {"seconds": 1.0, "facts": [{"stage": "wake"}], "steps": []} if origin == "sleep" else {}}

    rows = [row(1, "write", "superseded"), row(2, "sleep", "superseded"), row(3, "write", "consolidated", into=4),
            row(4, "sleep", "applied"), row(5, "sleep", "failed", reason="refused"), row(6, "sleep", "consolidated")]
    out = ledger_sleeps(rows)
    assert [(x["kept"], x["status"]) for x in out] == [(True, "superseded"), (True, "applied"), (False, "failed"),
                                                      (True, "consolidated")]
    assert [x["wake_removed"] for x in out] == [0, 1, 0, 0] and out[2]["reason"] == "refused"
    assert all(x["stages"] == [] for x in out)  # no ledger events given

    # with the ledger's events: each sleep's stage timings, from its own note events only
    events = {2: [{"kind": "pending", "data": {}}, {"kind": "note", "data": {"questions": {"n": 9, "seconds": 4.5}}},
                  {"kind": "note", "data": {"training": {"loss": [1.0], "seconds": 90.0}}},
                  {"kind": "note", "data": {"recheck": {"edit": 1.0}}}]}
    out = ledger_sleeps(rows, lambda i: events.get(i, []))
    assert out[0]["stages"] == [{"stage": "questions", "seconds": 4.5}, {"stage": "training", "seconds": 90.0}]
    assert out[1]["stages"] == []


# ---- bad input: clear errors naming file and line, before anything runs -----------------------

def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(RoseMemoryError, match="nope.jsonl"):
        load_benchmark(str(missing))
    with pytest.raises(RoseMemoryError, match="nope.jsonl"):
        load_locality(str(missing))


def test_malformed_line(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [SUBJECT, '{"subject": "Kaiya", "facts": [}'])
    with pytest.raises(RoseMemoryError, match=r"data\.jsonl, line 2: not valid JSON"):
        load_benchmark(path)
    loc = write_jsonl(tmp_path / "loc.jsonl", [LOCALITY[0], {"prompt": "no answer"}])
    with pytest.raises(RoseMemoryError, match=r"loc\.jsonl, line 2: missing key 'answer'"):
        load_locality(loc)


def test_fact_without_placeholder(tmp_path):
    bad = json.loads(json.dumps(SECOND))
    bad["facts"][0]["prompt"] = "Kaiya has a pet"
    path = write_jsonl(tmp_path / "data.jsonl", [SUBJECT, "", bad])  # blank lines are skipped, not renumbered
    with pytest.raises(RoseMemoryError, match=r"data\.jsonl, line 3, fact 0: .*'\{\}'"):
        load_benchmark(path)
    bad["facts"][0]["prompt"] = "{} has a pet"
    bad["facts"][0]["questions"] = ["What pet does Kaiya have?"]
    path = write_jsonl(tmp_path / "data.jsonl", [bad])
    with pytest.raises(RoseMemoryError, match=r"line 1, fact 0: questions\[0\]"):
        load_benchmark(path)


def test_other_bad_shapes(tmp_path):
    cases = [
        ([{"subject": "X Y", "facts": []}], "line 1: 'facts' must be a non-empty list"),
        ([["a list"]], "line 1: expected a JSON object"),
        ([SUBJECT, SUBJECT], "line 2: subject 'Aurelio Sarkisian' already appears on line 1"),
        ([{"facts": SUBJECT["facts"]}], "line 1: missing key 'subject'"),
    ]
    for rows, message in cases:
        with pytest.raises(RoseMemoryError, match=message.replace("(", r"\(").replace("[", r"\[")):
            load_benchmark(write_jsonl(tmp_path / "d.jsonl", rows))


def test_unknown_method():
    with pytest.raises(RoseMemoryError, match="unknown method 'romee'"):
        parse_methods("rose,romee")
    with pytest.raises(RoseMemoryError, match="no methods"):
        parse_methods(" , ")
    assert parse_methods("none, in-context") == ["none", "in-context"]


@pytest.mark.parametrize("case", ["missing", "malformed", "placeholder", "method", "outdir", "setting", "set_form",
                                  "set_value", "device", "dtype", "checkpoint", "end_sleep"])
def test_cli_rejects_bad_input_before_loading_the_model(tmp_path, monkeypatch, capsys, case):
    import rose_memory.model
    from rose_memory.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded although the input is bad")

    monkeypatch.setattr(rose_memory.model, "load_cached", no_model)
    data = write_jsonl(tmp_path / "data.jsonl", [SUBJECT])
    methods, out = "none", str(tmp_path / "out.json")
    expect = ""
    if case == "missing":
        data, expect = str(tmp_path / "absent.jsonl"), "absent.jsonl does not exist"
    elif case == "malformed":
        data, expect = write_jsonl(tmp_path / "data.jsonl", [SUBJECT, "{oops"]), "data.jsonl, line 2"
    elif case == "placeholder":
        bad = json.loads(json.dumps(SUBJECT))
        bad["facts"][1]["prompt"] = "lives in the city of"
        data, expect = write_jsonl(tmp_path / "data.jsonl", [bad]), "data.jsonl, line 1, fact 1"
    elif case == "method":
        methods, expect = "none,memitt", "unknown method 'memitt'"
    elif case == "outdir":
        out, expect = str(tmp_path / "no" / "such" / "out.json"), "does not exist"
    extra = []
    if case == "setting":
        extra, expect = ["--set", "stage_stepz=8"], "unknown editing setting(s) stage_stepz"
    elif case == "set_form":
        extra, expect = ["--set", "stage_steps"], "write KEY=VALUE"
    elif case == "set_value":   # a value out of range, with the other settings: refused before loading
        extra, expect = ["--set", "raw_prefixes=6"], "raw_prefixes: Value error, must be at most n_generic_contexts (5)"
    elif case == "device":
        extra, expect = ["--device", "tpu9"], "unknown device 'tpu9'"
    elif case == "dtype":
        extra, expect = ["--dtype", "float8"], "invalid choice: 'float8'"
    elif case == "checkpoint":
        (tmp_path / "ckpt").write_text("x")
        extra, expect = ["--checkpoint", str(tmp_path / "ckpt")], "is a file; give a folder"
    elif case == "end_sleep":   # batch mode sleeps every subject already
        extra, expect = ["--end-sleep"], "--end-sleep is for sequential mode"
    try:
        code = main(["eval", "--data", data, "--methods", methods, "--mode", "batch", "--json", out, *extra])
    except SystemExit as exit_:  # argparse's own checks (choices) exit with 2
        code = exit_.code
    assert code == 2
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_settings_are_parsed_as_json():
    from rose_memory.eval.cli import parse_settings

    got = parse_settings(["stage_steps=8", "layers=[4, 5, 6]", "iso=false", "rose_lr=0.25"])
    assert got == {"stage_steps": 8, "layers": [4, 5, 6], "iso": False, "rose_lr": 0.25}
    assert parse_settings([]) == {}
    with pytest.raises(RoseMemoryError, match="given twice"):
        parse_settings(["stage_steps=8", "stage_steps=9"])
    with pytest.raises(RoseMemoryError, match="stage_steps"):
        parse_settings(["stage_steps=many"])
    with pytest.raises(RoseMemoryError, match="iso_protect"):
        parse_settings(["iso_protect=1.5"])


# ---- the real model ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def eval_lm():
    from rose_memory.model import load_cached

    return load_cached()  # one load per process, shared with any other fixture using load_cached


def check_schema(doc: dict, methods: list[str], mode: str) -> None:
    assert set(doc) == {"model", "data", "mode", "results"}
    assert isinstance(doc["model"], str) and isinstance(doc["data"], str)
    assert doc["mode"] == mode
    assert [r["method"] for r in doc["results"]] == methods
    for r in doc["results"]:
        assert set(r) == {"method", "metrics", "n_probes", "seconds_per_write"}
        assert set(r["metrics"]) == set(METRICS) and set(r["n_probes"]) == set(METRICS)
        assert isinstance(r["seconds_per_write"], float) and r["seconds_per_write"] >= 0
        for m in METRICS:
            n, v = r["n_probes"][m], r["metrics"][m]
            assert isinstance(n, int) and n >= 0
            if n == 0:
                assert v is None
                continue
            assert isinstance(v, float)
            if m != "fluency":
                assert 0.0 <= v <= 1.0


@pytest.mark.slow
def test_one_subject_eval_on_the_real_model(eval_lm, tmp_path):
    from rose_memory.cli import main

    data = write_jsonl(tmp_path / "one.jsonl", [SUBJECT])
    loc = write_jsonl(tmp_path / "loc.jsonl", LOCALITY)
    out, answers, report = tmp_path / "out.json", tmp_path / "answers.jsonl", tmp_path / "report"
    methods = ["none", "in-context", "rose"]  # rose: a real edit through edit(), reverted afterwards
    weights = {k: v.detach().clone() for k, v in eval_lm.model.named_parameters() if "mlp" in k}
    code = main(["eval", "--data", data, "--locality", loc, "--methods", ",".join(methods), "--mode", "batch",
                 "--json", str(out), "--answers", str(answers), "--report", str(report)])
    assert code == 0
    doc = json.loads(out.read_text())
    check_schema(doc, methods, "batch")
    by = {r["method"]: r for r in doc["results"]}
    n_facts, n_par, n_q = 2, 2, 3
    for r in by.values():
        assert r["n_probes"]["efficacy"] == n_facts
        assert r["n_probes"]["generalization"] == n_par
        assert r["n_probes"]["instruction"] == r["n_probes"]["confusion"] == n_q
        assert r["n_probes"]["locality"] == len(LOCALITY)  # one subject: no other subject's questions
    # the unedited model is its own reference
    assert by["none"]["metrics"]["locality"] == 1.0
    assert by["none"]["metrics"]["fluency"] == pytest.approx(1.0)
    assert by["none"]["seconds_per_write"] == 0.0 == by["in-context"]["seconds_per_write"]
    assert by["rose"]["seconds_per_write"] > 0.0
    params = dict(eval_lm.model.named_parameters())
    assert all(torch.allclose(params[k], w, atol=1e-5) for k, w in weights.items())  # the edit was reverted

    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert rows and all(set(x) == {"method", "subject", "metric", "prompt", "answer", "target", "hit"} for x in rows)
    instr = [x for x in rows if x["metric"] == "instruction" and x["method"] == "in-context"]
    assert len(instr) == n_q
    # the prompt as sent: chat template, the subject's facts in the system message
    assert all("<|im_start|>" in x["prompt"] and "Warsaw" in x["prompt"] for x in instr)
    for x in rows:  # re-scoring the answers file gives the same hits
        if x["metric"] in ("efficacy", "generalization", "instruction"):
            assert x["hit"] == M.hit(x["answer"], x["target"])
    assert (report / "report.md").read_text().count("| rose |") >= 2
    assert (report / "metrics.png").stat().st_size > 1000


WEIGHT = "model.layers.4.mlp.down_proj.weight"


def fake_edit_factory(lm, calls):
    """Stands in for an editing method: a small random rank-1 Delta on one MLP weight."""
    from rose_memory.editing import Delta

    d_out, d_in = dict(lm.model.named_parameters())[WEIGHT].shape

    def fake_edit(lm_, requests, method="rose", config=None, progress=False, cache=None):
        calls.append([r.target for r in requests])
        fake_edit.configs.append(config)
        gen = torch.Generator().manual_seed(len(calls))
        u, v = torch.randn(d_out, 1, generator=gen), torch.randn(d_in, 1, generator=gen)
        return Delta(factors={WEIGHT: (0.05 * u, 0.05 * v)}, method=method)

    fake_edit.configs = []
    return fake_edit


@pytest.mark.slow
def test_batch_writes_each_subject_from_the_clean_model(eval_lm, tmp_path):
    from rose_memory.eval.runner import Runner

    subjects = load_benchmark(write_jsonl(tmp_path / "two.jsonl", [SUBJECT, SECOND]))
    locality = load_locality(write_jsonl(tmp_path / "loc.jsonl", LOCALITY))
    weight = dict(eval_lm.model.named_parameters())[WEIGHT]
    before = weight.detach().clone()
    calls: list = []
    fake = fake_edit_factory(eval_lm, calls)
    runner = Runner(eval_lm, subjects, locality, mode="batch", seed=5, progress=False, edit_fn=fake,
                    edit_config={"stage_steps": 3})
    result, plain = runner.run(["memit", "none"])  # any editing method name; the fake stands in for edit()
    assert calls == [["brown", "Warsaw"], ["parrot"]]  # all of a subject's facts in one call
    assert fake.configs == [{"seed": 5, "stage_steps": 3}] * 2  # --set overrides and --seed reach every write
    assert torch.allclose(weight.detach(), before, atol=1e-6)
    # locality: the locality file per subject plus the other subject's questions
    assert result.n_probes["locality"] == 2 * len(LOCALITY) + 3 + 1
    assert result.n_probes["instruction"] == 4 and result.seconds_per_write > 0
    assert result.n_probes["fluency"] == 2 * len(runner_generic())
    # the unedited model's answers are generated once: `none` reuses them all (and measures itself)
    generated = runner.answerer.generated
    assert runner.run_method("none").to_json() == plain.to_json()
    assert runner.answerer.generated == generated
    assert plain.metrics["locality"] == 1.0


def runner_generic():
    from rose_memory.eval.runner import GENERIC_PROMPTS

    return GENERIC_PROMPTS


@pytest.mark.slow
def test_sequential_writes_one_fact_per_call_through_the_memory(eval_lm, tmp_path, monkeypatch):
    import rose_memory.memory
    from rose_memory.eval.runner import Runner

    subjects = load_benchmark(write_jsonl(tmp_path / "two.jsonl", [SUBJECT, SECOND]))
    locality = load_locality(write_jsonl(tmp_path / "loc.jsonl", LOCALITY))
    weight = dict(eval_lm.model.named_parameters())[WEIGHT]
    before = weight.detach().clone()
    calls: list = []
    fake = fake_edit_factory(eval_lm, calls)
    monkeypatch.setattr(rose_memory.memory, "edit", fake)
    # the eval measures locality itself: the memory's write guard must not refuse (or slow) its writes
    monkeypatch.setattr(rose_memory.memory.ParametricMemory, "_canary_answers",
                        lambda *a: pytest.fail("the write guard ran inside the eval"))
    runner = Runner(eval_lm, subjects, locality, mode="sequential", progress=False,
                    memory_options={"verify": {"min_edit_recall": 0.0}}, edit_config={"stage_steps": 3})
    result = runner.run(["rose"])[0]
    # one new fact per call, subject after subject; the subject's fact held on an earlier edit is
    # solved for again (joint_subject), not written as the call's own
    assert calls == [["brown"], ["Warsaw", "brown"], ["parrot"]]
    assert all(c["stage_steps"] == 3 and c["seed"] == 0 for c in fake.configs)  # the memory writes with the --set overrides
    assert torch.allclose(weight.detach(), before, atol=1e-6)  # the memory gave the weights back
    # locality: the locality file after each subject, plus the second subject's question after the first
    assert result.n_probes["locality"] == 2 * len(LOCALITY) + 1
    assert result.n_probes["instruction"] == 4 and result.seconds_per_write > 0
    assert any("3 writes" in n for n in result.notes)


@pytest.mark.slow
def test_answers_are_generated_once_per_state(eval_lm):
    from rose_memory.eval.runner import Answerer, Probe

    answerer = Answerer(eval_lm, progress=False)
    probes = [Probe("", "locality", "The capital of France is", False, 8),
              Probe("", "locality", "What is the capital of Japan?", True, 8)]
    first = answerer.ask("s", probes)
    assert answerer.generated == 2
    assert answerer.ask("s", probes) == first and answerer.generated == 2
    # a shorter request is served from the longer answer; a longer one regenerates only what is needed
    short = answerer.ask("s", [Probe("", "locality", "The capital of France is", False, 4)])
    assert short[0][1] == first[0][1][:4] and answerer.generated == 2
    assert "<|im_start|>" in first[1][0] and first[0][0] == "The capital of France is"


def test_the_cli_dtype_choices_are_the_models_dtypes():
    # cli_options keeps its own list so the CLI starts without importing torch; it must not drift.
    from rose_memory.cli_options import DTYPE_CHOICES
    from rose_memory.model import DTYPES

    assert DTYPE_CHOICES == ["auto", *DTYPES]


@pytest.mark.slow
def test_retrieval_gives_each_probe_the_facts_of_the_names_it_contains(eval_lm, tmp_path):
    from rose_memory.eval.runner import Runner

    subjects = load_benchmark(write_jsonl(tmp_path / "two.jsonl", [SUBJECT, SECOND]))
    locality = load_locality(write_jsonl(tmp_path / "loc.jsonl", LOCALITY))
    runner = Runner(eval_lm, subjects, locality, mode="batch", progress=False, keep_records=True)
    ctx, ret = runner.run(["in-context", "retrieval"])
    instr = lambda r: [x for x in r.records if x["metric"] == "instruction"]  # noqa: E731
    assert [x["answer"] for x in instr(ret)] == [x["answer"] for x in instr(ctx)]  # own probes: the same facts
    assert all("Warsaw" in x["prompt"] for x in instr(ret) if x["subject"] == SUBJECT["subject"])
    # another subject's question names nobody written: asked as to the clean model
    assert ret.metrics["locality"] == 1.0 and ret.seconds_per_write == 0.0
    loc = [x for x in ret.records if x["metric"] == "locality"]
    assert not any("You know these facts" in x["prompt"] for x in loc)


@pytest.mark.slow
def test_rose_then_sleep_in_batch_mode_leaves_the_weights_as_they_were(eval_lm, tmp_path):
    """rose+consolidate: the wake write, then the sleep stage on it (no training steps here, so every
    fact stays on its wake edit), the probes, then both deltas reverted."""
    from rose_memory.eval.report import markdown_table
    from rose_memory.eval.runner import EvalRun, Runner

    subjects = load_benchmark(write_jsonl(tmp_path / "one.jsonl", [SECOND]))
    weights = {k: v.detach().clone() for k, v in eval_lm.model.named_parameters() if "mlp" in k}
    calls: list = []
    runner = Runner(eval_lm, subjects, [], mode="batch", progress=False, edit_fn=fake_edit_factory(eval_lm, calls),
                    sleep_config={"steps": 0, "samples": 0, "model_questions": 0, "other_names": 2,
                                  "generic_negatives": 2, "canary_names": 2, "delta_scales": [1.0]})
    (result,) = runner.run(["rose+consolidate"])
    assert calls == [["parrot"]]
    (sleep,) = result.sleeps
    assert sleep["subject"] == SECOND["subject"] and [f["stage"] for f in sleep["facts"]] == ["wake"]
    # the default delta reads the wake edit's trace, so the gate runs at wake scale 1 only
    assert [s["wake_scale"] for s in sleep["steps"]] == [1.0] and sleep["wake_removed"] == 0
    # an untrained delta answers no more held-back questions than the wake edit: refused, and the note says so
    assert not sleep["kept"] and "no more held-back questions" in sleep["reason"]
    # where the sleep's time went: seconds at the end of each stage, in order
    assert [x["stage"] for x in sleep["stages"]] == ["gate", "transfer_set", "trained", "delta_scale", "gate"]
    assert [x["seconds"] for x in sleep["stages"]] == sorted(x["seconds"] for x in sleep["stages"])
    assert any(n.startswith("sleep: 1 sleep(s) of 1 subject(s)") and "0 sleeps kept" in n for n in result.notes)
    params = dict(eval_lm.model.named_parameters())
    assert all(torch.allclose(params[k], w, atol=1e-6) for k, w in weights.items())
    run = EvalRun(model="m", data="d", mode="batch", results=[result])
    assert "rose+consolidate" in markdown_table(run)


@pytest.mark.slow
def test_end_sleep_sleeps_what_is_new_after_the_last_write(eval_lm, tmp_path, monkeypatch):
    """Sequential rose+consolidate with end_sleep: the policy never sleeps here, so every subject
    sleeps once, after the last write and before the final probes; the weights are base afterwards."""
    import rose_memory.memory
    from rose_memory.eval.runner import Runner

    subjects = load_benchmark(write_jsonl(tmp_path / "two.jsonl", [SUBJECT, SECOND]))
    weights = {k: v.detach().clone() for k, v in eval_lm.model.named_parameters() if "mlp" in k}
    calls: list = []
    monkeypatch.setattr(rose_memory.memory, "edit", fake_edit_factory(eval_lm, calls))
    runner = Runner(eval_lm, subjects, [], mode="sequential", progress=False, end_sleep=True,
                    memory_options={"verify": {"min_edit_recall": 0.0},
                                    "policy": {"every_n_writes": None, "recheck_every": None}},
                    sleep_config={"steps": 0, "samples": 0, "model_questions": 0, "other_names": 2,
                                  "generic_negatives": 2, "canary_names": 2, "delta_scales": [1.0]})
    (result,) = runner.run(["rose+consolidate"])
    assert len(calls) == 3  # one write per fact
    assert sorted(x["subject"] for x in result.sleeps) == sorted(s.name for s in subjects)
    assert any(n.startswith("end sleep: after the last write, 2 subject(s)") for n in result.notes)
    params = dict(eval_lm.model.named_parameters())
    assert all(torch.allclose(params[k], w, atol=1e-6) for k, w in weights.items())
    with pytest.raises(RoseMemoryError, match="for sequential mode"):
        Runner(eval_lm, subjects, [], mode="batch", end_sleep=True)
