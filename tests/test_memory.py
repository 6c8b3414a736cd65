"""ParametricMemory on the real embedded model with real RoSE edits.

One home is written once per module (one RoSE edit); each test works on a copy of it. When the
policy starts a sleep is tested on the tiny model (tests/test_policy.py).
"""

import copy
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch

from rose_memory.cli import main as cli
from rose_memory.errors import RoseMemoryError
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_cached
from rose_memory.text import mentions

pytestmark = pytest.mark.slow

FACTS = [("lives in the city of", "Warsaw"), ("{}'s favorite color is", "brown")]
# The memory's own verification question. Direct questions ("What is Aurelio's favorite
# color?") are answered right only part of the time (README, Results), so the tests of
# persistence ask the one the write was verified with.
QUESTION = 'Finish the sentence "Aurelio lives in the city of ..."'
ANSWER = "warsaw"


@pytest.fixture(scope="module")
def model():
    return load_cached()


@pytest.fixture(scope="module")
def base(model):
    """The base value of every MLP output projection, before any memory touches them."""
    return {n: p.detach().clone() for n, p in model.model.named_parameters() if "down_proj" in n}


@pytest.fixture(scope="module")
def written(tmp_path_factory, model, base):
    home = tmp_path_factory.mktemp("written")
    with ParametricMemory(home, model=model) as mem:
        record = mem.write("Aurelio", FACTS)
        edited = {n: p.detach().clone() for n, p in model.model.named_parameters() if n in base}
    return home, record, edited


@pytest.fixture
def home(written, tmp_path):
    """A private copy of the written home."""
    return shutil.copytree(written[0], tmp_path / "home")


def weights(model, names):
    return {n: p.detach().clone() for n, p in model.model.named_parameters() if n in names}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def run_cli(*argv) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rose_memory.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=600)


def test_remember_then_ask_recalls(written, model, base):
    home, record, edited = written
    assert record.status == "applied" and record.edit_id == 1
    assert record.recall["edit"] == 1.0, record.recall
    assert same(weights(model, base), base)  # closing gave the weights back
    with ParametricMemory(home, model=model) as mem:
        assert same(weights(model, base), edited)  # reopening rebuilt them from the ledger
        assert ANSWER in mem.ask(QUESTION).lower()
        assert [e["status"] for e in mem.edits()] == ["applied"]
        assert mem.verify() == []


def test_a_namespace_without_edits_answers_from_the_base_weights(home, model, base, written):
    """Namespaces are delta sets: the written fact answers in its namespace only; another
    namespace's weights are the base model's, bit for bit, and switching back is exact."""
    with ParametricMemory(home, model=model) as mem:
        assert ANSWER in mem.ask(QUESTION).lower()
        assert ANSWER not in mem.ask(QUESTION, namespace="bob").lower()
        assert same(weights(model, base), base)
        assert all(torch.equal(p, mem._base[n]) for n, p in model.model.named_parameters() if n in mem._base)
        assert ANSWER in mem.ask(QUESTION, namespace="default").lower()
        assert same(weights(model, base), written[2])


def test_a_new_process_recalls_what_the_last_one_wrote(home):
    out = run_cli("ask", QUESTION, "--home", str(home), "--json")
    assert out.returncode == 0, out.stderr
    assert ANSWER in json.loads(out.stdout)["answer"].lower()
    out = run_cli("ledger", "list", "--home", str(home), "--json")
    rows = json.loads(out.stdout)
    assert [(r["id"], r["status"], r["subject"]) for r in rows] == [(1, "applied", "Aurelio")]


def test_forget_restores_the_base_weights(home, model, base):
    with ParametricMemory(home, model=model) as mem:
        assert mem.forget(1) == [1]
        assert same(weights(model, base), base)  # bit for bit
        assert ANSWER not in mem.ask(QUESTION).lower()
        assert mem.edits()[0]["status"] == "forgotten" and mem.verify() == []
        with pytest.raises(RoseMemoryError, match="forgotten; only applied"):
            mem.forget(1)
    with ParametricMemory(home, model=model) as mem:
        assert mem.live == {} and same(weights(model, base), base)


def test_supersede_replaces_the_object_and_keeps_the_other_facts(home, model):
    with ParametricMemory(home, model=model) as mem:
        rec = mem.write("Aurelio", [("lives in the city of", "Krakow")])
        assert rec.status == "applied", rec.reason
        assert rec.superseded == [1]
        assert {f["object"] for f in rec.facts} == {"Krakow", "brown"}  # brown carried over
        old, new = mem.edits()
        assert old["status"] == "superseded" and old["superseded_by"] == new["id"]
        assert list(mem.live) == [new["id"]]
        said = " ".join(a["edit"] for a in rec.recall["answers"])
        assert "Krakow" in said and "Warsaw" not in said
        assert mem.verify() == []


def test_a_write_carries_the_subjects_facts_and_forget_takes_back_what_a_write_told(home, model, written, base, capsys):
    """Every edit of a subject writes to its key: a new relation's edit solves for the facts the
    subject already holds too and replaces the edit they were on (`joint_subject`). Forgetting a
    write forgets what that write told, wherever it is held now; the rest is written again."""
    with ParametricMemory(home, model=model) as mem:
        rec = mem.write("Aurelio", [("works as a", "carpenter")])
        assert rec.status == "applied", rec.reason
        assert rec.superseded == [1] and [f["object"] for f in rec.facts] == ["carpenter", "Warsaw", "brown"]
        row = mem.ledger.get(rec.edit_id)
        assert [(f["object"], f["from"]) for f in row["metrics"]["carried"]] == [("Warsaw", 1), ("brown", 1)]
        said = {f["object"]: a["edit"] for f, a in zip(rec.facts, rec.recall["answers"], strict=True)}  # all three verified
        assert all(mentions(text, obj) for obj, text in said.items()), said
        assert list(mem.live) == [rec.edit_id]  # one live edit for the subject
        capsys.readouterr()
        assert cli(["--home", str(home), "ledger", "show", str(rec.edit_id)]) == 0
        shown = capsys.readouterr().out
        assert "Aurelio lives in the city of -> Warsaw  (carried from edit 1)" in shown, shown
        # the first write told Warsaw and brown; they are held by the second write's edit now
        assert sorted(mem.forget(1)) == [1, rec.edit_id]
        rows = {r["id"]: r for r in mem.edits()}
        assert rows[1]["status"] == rows[rec.edit_id]["status"] == "forgotten"
        (again,) = [r for r in rows.values() if r["status"] == "applied"]
        assert again["origin"] == "rewrite" and [f["object"] for f in again["facts"]] == ["carpenter"]
        assert ANSWER not in mem.ask(QUESTION).lower()  # Warsaw is gone from the weights
        assert mem.forget(again["id"]) == [again["id"]]  # told it all: reverted, nothing written again
        assert same(weights(model, base), base)
        assert mem.verify() == []


def test_tampered_row_fails_verify(home, capsys):
    assert cli(["ledger", "verify", "--home", str(home)]) == 0
    conn = sqlite3.connect(home / "ledger.sqlite")
    conn.execute("UPDATE edits SET facts = replace(facts, 'Warsaw', 'Paris') WHERE id = 1")
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert cli(["ledger", "verify", "--home", str(home)]) == 1
    assert "edit 1: content does not match its hash" in capsys.readouterr().out


def test_tampered_delta_file_fails_verify_and_open(home, model, base):
    path = home / "deltas" / "000001.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-4] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert cli(["ledger", "verify", "--home", str(home)]) == 1
    with pytest.raises(RoseMemoryError, match="changed on disk"):
        ParametricMemory(home, model=model)
    assert same(weights(model, base), base)  # nothing was applied
    assert getattr(model.model, "_rose_memory_home", None) is None  # and the model is free again


CRASH = textwrap.dedent("""
    import os, sys
    import rose_memory.memory as M
    from rose_memory.stores.deltas import load_delta
    home = sys.argv[1]
    real = load_delta(os.path.join(home, "deltas", "000001.safetensors"))  # a real RoSE delta
    M.edit = lambda *a, **k: real
    M.ParametricMemory._measure = lambda *a, **k: os._exit(9)  # die after the weights changed
    M.ParametricMemory(home).write("Bob", [("works as a", "baker")])
""")


def test_crash_between_pending_and_applied_leaves_a_consistent_memory(home, written, model, base):
    (home / "deltas" / "000009.safetensors.tmp").write_bytes(b"half")  # as a torn write would leave
    proc = subprocess.run([sys.executable, "-c", CRASH, str(home)], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 9, proc.stderr
    with ParametricMemory(home, model=model) as mem:
        rows = mem.edits()
        assert [(r["id"], r["status"]) for r in rows] == [(1, "applied"), (2, "failed")]
        assert "interrupted" in rows[1]["reason"]
        assert same(weights(model, base), written[2])  # base + the one applied edit
        assert mem.verify() == []
        assert not list((home / "deltas").glob("*.tmp"))


def test_failure_during_a_write_reverts_and_records_it(home, model, base, monkeypatch, written):
    import rose_memory.memory as M

    def broken(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(M, "edit", broken)
    with ParametricMemory(home, model=model) as mem:
        with pytest.raises(RuntimeError):
            mem.write("Aurelio", [("lives in the city of", "Krakow")])  # would supersede edit 1
        assert same(weights(model, base), written[2])  # edit 1 back in place
        assert [(r["id"], r["status"]) for r in mem.edits()] == [(1, "applied"), (2, "failed")]
        assert "solver exploded" in mem.edits()[1]["reason"] and mem.verify() == []


@pytest.mark.parametrize("argv, message", [
    (["remember", "--subject", " ", "--fact", "lives in=Paris"], "subject is empty"),
    (["remember", "--subject", "Bob", "--fact", "lives in Paris"], "has no '='"),
    (["remember", "--subject", "Bob", "--fact", "lives in=" + "x" * 10_000], "at most 500"),
    (["forget", "99"], "no edit with id 99"),
    (["ask", "Where does Aurelio live?", "--device", "tpu"], "unknown device"),
])
def test_bad_input_via_the_cli_changes_nothing(home, capsys, argv, message):
    before = (home / "ledger.sqlite").read_bytes()
    assert cli([*argv, "--home", str(home)]) == 2
    assert message in capsys.readouterr().err
    assert (home / "ledger.sqlite").read_bytes() == before


def test_the_model_cache_is_keyed_by_what_device_and_dtype_resolve_to(model, tmp_path):
    # The memory passes device/dtype on; "auto" and its resolved value must not load a second copy.
    import torch

    from rose_memory.model import EMBEDDED

    assert load_cached(EMBEDDED, "auto", "auto") is model
    if not torch.cuda.is_available():
        assert load_cached(None, "cpu", "float32") is model
    with pytest.raises(RoseMemoryError, match="unknown dtype"):
        ParametricMemory(tmp_path / "new", dtype="float8")
    assert not (tmp_path / "new").exists()        # refused before the home is created


def test_bad_input_via_the_api_changes_nothing(home, model, written):
    with ParametricMemory(home, model=model) as mem:
        for subject, facts, message in [
            ("", FACTS, "subject is empty"),
            ("Bob", [("lives in", "x" * 10_000)], "at most 500"),
            ("Bob", [], "non-empty list"),
            ("Bob", ["lives in Paris"], "relation, object"),
        ]:
            with pytest.raises(RoseMemoryError, match=message):
                mem.write(subject, facts)
        with pytest.raises(RoseMemoryError, match="no edit with id 99"):
            mem.forget(99)
        with pytest.raises(RoseMemoryError, match="question is empty"):
            mem.ask("  ")
        assert len(mem.edits()) == 1 and same(weights(model, written[2]), written[2])


def test_lora_export_reproduces_the_edited_logits(home, model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = model.tokenizer("Aurelio lives in the city of", return_tensors="pt").input_ids
    with ParametricMemory(home, model=model) as mem:
        report = mem.export_lora(tmp_path / "lora")
        mem.export_merged(tmp_path / "merged")
        with torch.no_grad():
            want = model.model(ids).logits
    assert report["max_relative_error"] == 0.0 and not report["truncated"]
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model.model), str(tmp_path / "lora"))  # base again
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, want, atol=1e-4)
        assert torch.allclose(merged(ids).logits, want, atol=1e-5)


