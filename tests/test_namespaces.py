"""Namespaces are delta sets: the weights that answer for a namespace are base + its applied deltas.

On the tiny random model (rose_memory.tiny): real RoSE writes, cheap ones. Whether a fact is
*answered* in one namespace and not in another is checked on the real model in
tests/test_memory.py (test_a_namespace_without_edits_answers_from_the_base_weights).
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from rose_memory.cli import main as cli
from rose_memory.errors import RoseMemoryError
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_model
from rose_memory.tiny import base_plus, tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

FACT = [("lives in the city of", "Warsaw")]


@pytest.fixture(scope="module")
def base(tiny_dir):
    """The tiny model's weights as loaded from disk (no memory has touched this copy)."""
    return {n: p.detach().clone() for n, p in load_model(str(tiny_dir)).model.named_parameters()}


@pytest.fixture
def home(tmp_path, tiny_dir):
    return tiny_home(tmp_path / "home", tiny_dir)


def weights(mem) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in mem.lm.model.named_parameters()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)



def test_each_namespace_answers_with_base_plus_its_own_deltas(home, base):
    with ParametricMemory(home) as mem:
        a = mem.write("Aurelio", FACT, namespace="alice")
        assert a.status == "applied" and a.namespace == "alice"
        alice = weights(mem)
        assert not same(alice, base)                                 # the write changed the weights ...
        assert same(alice, base_plus(base, [mem.live[a.edit_id]]))    # ... by exactly its delta
        mem.use("bob")
        assert mem.live == {} and same(weights(mem), base)           # bob has no edits: base, bit for bit
        b = mem.write("Bruno", [("works as a", "baker")], namespace="bob")
        bob = weights(mem)
        assert list(mem.live) == [b.edit_id]
        mem.use("alice")
        assert same(weights(mem), alice)                             # switching back is exact
        mem.use("default")
        assert same(weights(mem), base)
        mem.use("bob")
        assert same(weights(mem), bob)
        assert sorted(mem.namespaces()) == ["alice", "bob"]
        assert [r["id"] for r in mem.edits(namespace="alice")] == [a.edit_id]
        assert mem.verify() == []
    with ParametricMemory(home) as mem:                              # a new process sees the same sets
        assert same(weights(mem), base)                              # it opens on "default"
        mem.use("alice")
        assert same(weights(mem), alice)


def test_operations_act_on_their_namespace_only(home, base):
    with ParametricMemory(home) as mem:
        a = mem.write("Aurelio", FACT, namespace="alice")
        mem.write("Aurelio", FACT, namespace="bob")                  # the same fact, another set
        rows = mem.edits()
        assert [(r["namespace"], r["status"]) for r in rows] == [("alice", "applied"), ("bob", "applied")]
        with pytest.raises(RoseMemoryError, match="namespace 'alice', not 'bob'"):
            mem.forget(a.edit_id, namespace="bob")
        assert mem.forget(subject="Aurelio", namespace="bob") == [2]
        assert [r["id"] for r in mem.edits(status="applied")] == [a.edit_id]
        mem.ask("Where does Aurelio live?", namespace="bob", max_new_tokens=2)
        assert same(weights(mem), base)                              # bob's only edit is gone
        with pytest.raises(RoseMemoryError, match="no applied edits to export in namespace 'bob'"):
            mem.export_lora(home / "lora", namespace="bob")
        report = mem.export_lora(home / "lora", namespace="alice")
        assert report["max_relative_error"] == 0.0
        with pytest.raises(RoseMemoryError, match="not a valid name"):
            mem.ask("hi", namespace="../etc")


def test_namespace_switch_is_fast(home):
    with ParametricMemory(home) as mem:
        mem.write("Aurelio", FACT, namespace="alice")
        mem.write("Bruno", [("works as a", "baker")], namespace="bob")
        times = []
        for _ in range(20):
            for ns in ("alice", "bob"):
                start = time.perf_counter()
                mem.use(ns)
                times.append(time.perf_counter() - start)
    times.sort()
    print(f"namespace switch on the tiny model: median {times[len(times) // 2] * 1e3:.2f} ms")
    assert times[len(times) // 2] < 0.05


def test_the_chat_model_answers_with_its_namespace(home, base):
    from rose_memory.agents import ChatSession, RoseChatModel

    with ParametricMemory(home) as mem:
        mem.write("Aurelio", FACT, namespace="alice")
        seen = []
        real = mem.lm.model.generate

        def spy(*args, **kwargs):
            seen.append((mem.namespace, same(weights(mem), base)))
            return real(*args, **kwargs)

        mem.lm.model.generate = spy
        try:
            RoseChatModel.from_memory(mem, namespace="bob", max_new_tokens=2).invoke("Where does Aurelio live?")
            RoseChatModel.from_memory(mem, namespace="alice", max_new_tokens=2).invoke("Where does Aurelio live?")
        finally:
            del mem.lm.model.generate
        assert seen == [("bob", True), ("alice", False)]
        session = ChatSession(mem, window=1, extractor=False, namespace="carol")
        assert {t.namespace for t in session.tools} == {"carol"}


def test_the_tools_namespace_is_set_by_the_program_not_the_model(home):
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from rose_memory.agents import RoseForgetTool, RoseMemoryTool

    with ParametricMemory(home) as mem:
        tool = RoseMemoryTool(memory=mem, namespace="alice")
        params = convert_to_openai_tool(tool)["function"]["parameters"]
        assert "namespace" not in params["properties"]
        call = {"type": "tool_call", "id": "c1", "name": "remember_facts",
                "args": {"subject": "Aurelio", "facts": [{"relation": FACT[0][0], "object": FACT[0][1]}],
                         "namespace": "bob"}}                      # a model that tries anyway
        msg = tool.invoke(call)
        assert msg.status == "success", msg.content
        assert [r["namespace"] for r in mem.edits()] == ["alice"]
        forget_bob = RoseForgetTool(memory=mem, namespace="bob")
        msg = forget_bob.invoke({"type": "tool_call", "id": "c2", "name": "forget_memory", "args": {"edit_id": 1}})
        assert msg.status == "error" and "namespace 'alice'" in msg.content
        assert mem.edits()[0]["status"] == "applied"
        with pytest.raises(ValueError, match="not a valid name"):
            RoseMemoryTool(memory=mem, namespace="a b")


def test_cli_takes_home_and_namespace_before_or_after_the_command(home, capsys):
    assert cli(["--home", str(home), "--namespace", "alice", "remember", "--subject", "Aurelio",
                "--fact", "lives in the city of=Warsaw"]) == 0
    assert cli(["remember", "--subject", "Bruno", "--fact", "works as a=baker", "--home", str(home),
                "--namespace", "bob"]) == 0
    capsys.readouterr()
    for argv in (["--home", str(home), "ledger", "list", "--json", "--namespace", "alice"],
                 ["--home", str(home), "--namespace", "alice", "ledger", "list", "--json"],
                 ["ledger", "list", "--home", str(home), "--namespace", "alice", "--json"]):
        assert cli(argv) == 0
        assert [r["subject"] for r in json.loads(capsys.readouterr().out)] == ["Aurelio"], argv
    assert cli(["--home", str(home), "ledger", "list", "--json"]) == 0          # default namespace: empty
    assert json.loads(capsys.readouterr().out) == []
    assert cli(["--home", str(home), "ledger", "list", "--all-namespaces", "--json"]) == 0
    assert [r["namespace"] for r in json.loads(capsys.readouterr().out)] == ["alice", "bob"]
    assert cli(["--home", str(home), "ledger", "show", "2"]) == 2               # edit 2 is bob's
    assert "add --namespace bob" in capsys.readouterr().err
    assert cli(["--home", str(home), "--namespace", "bob", "ledger", "show", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["subject"] == "Bruno"
    assert cli(["--home", str(home), "forget", "1"]) == 2                      # edit 1 is alice's
    assert "add --namespace alice" in capsys.readouterr().err
    assert cli(["--home", str(home), "--namespace", "alice", "forget", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"forgotten": [1], "written_again": []}
    assert cli(["--home", str(home), "--namespace", "bob", "ask", "Who is Bruno?", "--max-new-tokens", "2"]) == 0
    assert cli(["--home", str(home), "ledger", "verify"]) == 0
