"""`rose-memory ledger serve`: the ledger read-only in Datasette with canned queries (no model).

Datasette is an optional extra (rose-memory[audit]); the test that starts it is skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from rose_memory.cli import main as cli
from rose_memory.memory_cli import AUDIT_QUERIES, audit_metadata, serve_command
from rose_memory.stores.ledger import Ledger

FACTS = [{"prompt": "{} lives in the city of", "object": "Warsaw"}]


@pytest.fixture
def home(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    a = ledger.add("Aurelio", FACTS, "rose", "alice")
    ledger.transition([(a, "applied", {"delta_file": "000001.safetensors", "delta_sha256": "0" * 64})])
    b = ledger.add("Bruno", FACTS, "rose", "bob")
    ledger.transition([(b, "failed", {"reason": "write guard: the edit changed 5 of 8 answers"})])
    ledger.close()
    return tmp_path


def test_the_canned_queries_run_on_a_read_only_connection(home):
    conn = sqlite3.connect(f"file:{home / 'ledger.sqlite'}?mode=ro", uri=True)
    run = lambda name, **p: conn.execute(AUDIT_QUERIES[name]["sql"], p).fetchall()  # noqa: E731
    assert [r[:2] for r in run("live_edits", namespace="alice")] == [(1, "Aurelio")]
    assert run("live_edits", namespace="bob") == []
    assert [r[5] for r in run("subject_history", subject="Bruno")] == ["pending", "failed"]
    assert run("failed_writes")[0][4].startswith("write guard")
    assert set(run("edits_per_namespace")) == {("alice", "applied", 1), ("bob", "failed", 1)}
    assert len(run("recent_events")) == 4
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM edits")
    conn.close()


def test_serve_command_and_metadata(home):
    cmd = serve_command(home / "ledger.sqlite", home / "m.json", "127.0.0.1", 8123)
    assert cmd[1:4] == ["-m", "datasette", "serve"] and str(home / "ledger.sqlite") in cmd
    assert "--immutable" not in cmd and "-i" not in cmd    # a mutable file, opened mode=ro by Datasette
    meta = audit_metadata()
    assert set(meta["databases"]["ledger"]["queries"]) == set(AUDIT_QUERIES)
    assert not any(q.get("write") for q in AUDIT_QUERIES.values())


def test_serve_without_datasette_says_what_to_install(home, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasette" else real(name, *a))
    assert cli(["--home", str(home), "ledger", "serve"]) == 2
    assert "rose-memory[audit]" in capsys.readouterr().err


def test_datasette_serves_the_canned_queries(home):
    pytest.importorskip("datasette")
    from datasette.app import Datasette

    ds = Datasette([str(home / "ledger.sqlite")], metadata=audit_metadata())

    async def get(path):
        response = await ds.client.get(path)
        assert response.status_code == 200, response.text[:500]
        return response.json()

    rows = asyncio.run(get("/ledger/live_edits.json?namespace=alice&_shape=array"))
    assert [(r["id"], r["subject"]) for r in rows] == [(1, "Aurelio")]
    rows = asyncio.run(get("/ledger/failed_writes.json?_shape=array"))
    assert rows[0]["subject"] == "Bruno"
    assert not ds.get_database("ledger").is_memory
    before = (home / "ledger.sqlite").stat().st_mtime_ns
    asyncio.run(get("/ledger/edits.json?_shape=array"))
    assert (home / "ledger.sqlite").stat().st_mtime_ns == before
    assert json.loads(json.dumps(rows))  # JSON all the way
