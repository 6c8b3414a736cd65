"""The edit ledger without a model: transitions, the hash chain, delta files, WAL."""

import sqlite3

import pytest
import torch

from rose_memory.editing.delta import Delta
from rose_memory.errors import RoseMemoryError
from rose_memory.stores.deltas import DeltaStore
from rose_memory.stores.ledger import Ledger

FACTS = [{"prompt": "{} lives in the city of", "object": "Warsaw"}]


@pytest.fixture
def home(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    store = DeltaStore(tmp_path / "deltas")
    yield ledger, store
    ledger.close()


def small_delta(seed: int) -> Delta:
    g = torch.Generator().manual_seed(seed)
    return Delta({"w": (torch.randn(6, 2, generator=g), torch.randn(4, 2, generator=g))}, method="rose")


def applied(ledger: Ledger, store: DeltaStore, subject: str = "Aurelio") -> int:
    eid = ledger.add(subject, FACTS, "rose")
    name, sha = store.save(eid, small_delta(eid))
    ledger.transition([(eid, "applied", {"delta_file": name, "delta_sha256": sha, "metrics": {"edit": 1.0}})])
    return eid


def sql(ledger: Ledger, statement: str, *args) -> None:
    """Change the file behind the ledger's back, as a tamperer would."""
    conn = sqlite3.connect(ledger.path)
    conn.execute(statement, args)
    conn.commit()
    conn.close()


def test_allowed_transitions(home):
    ledger, store = home
    a = applied(ledger, store)
    b = ledger.add("Bob", FACTS, "rose")
    ledger.transition([(b, "failed", {"reason": "recall too low"})])
    c = applied(ledger, store, "Carl")
    ledger.transition([(a, "superseded", {"superseded_by": c}), (c, "forgotten", {})])
    rows = {r["id"]: r for r in ledger.rows()}
    assert [rows[i]["status"] for i in (a, b, c)] == ["superseded", "failed", "forgotten"]
    assert rows[a]["superseded_by"] == c and rows[b]["reason"] == "recall too low"
    assert rows[a]["metrics"] == {"edit": 1.0} and rows[a]["applied_at"]
    assert [e["to_status"] for e in ledger.events(a)] == ["pending", "applied", "superseded"]
    assert ledger.verify(store.root) == []


@pytest.mark.parametrize("path", [("failed", "applied"), ("applied", "pending"), ("superseded", "applied"),
                                  ("forgotten", "forgotten"), ("consolidated", "applied")])
def test_other_transitions_raise(home, path):
    ledger, store = home
    eid = ledger.add("Aurelio", FACTS, "rose")
    first, second = path
    if first != "failed":
        ledger.transition([(eid, "applied", {})])
    if first not in ("applied", "failed"):
        ledger.transition([(eid, first, {})])
    elif first == "failed":
        ledger.transition([(eid, "failed", {})])
    with pytest.raises(RoseMemoryError, match=f"is {first}; it cannot become {second}"):
        ledger.transition([(eid, second, {})])
    assert ledger.get(eid)["status"] == first


def test_pending_cannot_be_forgotten_and_batches_are_atomic(home):
    ledger, store = home
    a = applied(ledger, store)
    b = ledger.add("Bob", FACTS, "rose")
    with pytest.raises(RoseMemoryError, match="pending; it cannot become forgotten"):
        ledger.transition([(a, "forgotten", {}), (b, "forgotten", {})])
    assert ledger.get(a)["status"] == "applied"  # the first change was rolled back with the batch
    assert ledger.verify(store.root) == []


def test_unknown_id_and_bad_fields(home):
    ledger, _ = home
    with pytest.raises(RoseMemoryError, match="no edit with id 42"):
        ledger.get(42)
    eid = ledger.add("Aurelio", FACTS, "rose")
    with pytest.raises(RoseMemoryError, match="cannot set"):
        ledger.transition([(eid, "applied", {"subject": "Mallory"})])
    with pytest.raises(RoseMemoryError, match="unknown status"):
        ledger.rows(status="done")


@pytest.mark.parametrize("tamper, culprit", [
    ("UPDATE edits SET subject = 'Mallory' WHERE id = 2", "edit 2"),
    ("UPDATE edits SET facts = '[]' WHERE id = 1", "edit 1"),
    ("UPDATE edits SET status = 'forgotten' WHERE id = 2", "edit 2"),       # no event says so
    ("UPDATE edits SET metrics = '{\"edit\": 0.0}' WHERE id = 3", "edit 3"),
    ("DELETE FROM edits WHERE id = 2", "edit 3"),                          # chain broken after the gap
    ("DELETE FROM edits WHERE id = 3", "edit 3"),                          # its events remain
    ("UPDATE events SET data = '{}' WHERE id = 2", "event 2"),
    ("DELETE FROM events WHERE id = 4", "event 5"),
])
def test_verify_names_the_tampered_row(home, tamper, culprit):
    ledger, store = home
    for subject in ("Aurelio", "Bob", "Carl"):
        applied(ledger, store, subject)
    assert ledger.verify(store.root) == []
    sql(ledger, tamper)
    problems = ledger.verify(store.root)
    assert problems and any(p.startswith(culprit + ":") for p in problems), problems


def test_verify_detects_reordering(home):
    ledger, store = home
    for subject in ("Aurelio", "Bob"):
        applied(ledger, store, subject)
    # Swap the two rows' contents, hashes included: each row is intact, the order is not.
    sql(ledger, "UPDATE edits SET id = -1 WHERE id = 1")
    sql(ledger, "UPDATE edits SET id = 1 WHERE id = 2")
    sql(ledger, "UPDATE edits SET id = 2 WHERE id = -1")
    assert any("edit" in p for p in ledger.verify(store.root))


def test_delta_file_changed_or_missing(home):
    ledger, store = home
    a, b = applied(ledger, store), applied(ledger, store, "Bob")
    path_a = store.root / ledger.get(a)["delta_file"]
    blob = bytearray(path_a.read_bytes())
    blob[-1] ^= 1
    path_a.write_bytes(bytes(blob))
    (store.root / ledger.get(b)["delta_file"]).unlink()
    problems = ledger.verify(store.root)
    assert any(p.startswith(f"edit {a}:") and "changed on disk" in p for p in problems)
    assert any(p.startswith(f"edit {b}:") and "missing" in p for p in problems)
    with pytest.raises(RoseMemoryError, match="changed on disk"):
        store.load(ledger.get(a)["delta_file"], ledger.get(a)["delta_sha256"])


def test_wal_and_a_second_reader(home):
    ledger, store = home
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    eid = applied(ledger, store)
    other = Ledger(ledger.path)
    try:
        assert other.get(eid)["status"] == "applied"
        assert other.verify(store.root) == []
    finally:
        other.close()


def test_notes_are_chained_but_change_no_status(home):
    ledger, store = home
    eid = applied(ledger, store)
    ledger.note(eid, {"recheck": {"edit": 0.5}})
    assert ledger.get(eid)["status"] == "applied"
    assert ledger.events(eid)[-1]["kind"] == "note"
    assert ledger.verify(store.root) == []
