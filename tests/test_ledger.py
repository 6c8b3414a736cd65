"""The edit ledger without a model: transitions, the hash chain, delta files, WAL."""

import sqlite3
from types import SimpleNamespace

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


# -- keyed ledgers: an HMAC chain and a keyed head record ------------------------------------------

KEY = b"correct horse battery staple"


def rechain(path, key: bytes | None = None) -> None:
    """What a tamperer who can write the file does after changing rows: recompute every hash of both
    chains (plain SHA-256 unless a key is given), so that each row matches its hash again."""
    from rose_memory.stores.ledger import GENESIS, _edit_content, _event_content, _hash

    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    for table, content in (("edits", _edit_content), ("events", _event_content)):
        prev = GENESIS
        for row in [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]:
            h = _hash(content(row), prev, key)
            conn.execute(f"UPDATE {table} SET prev_hash = ?, row_hash = ? WHERE id = ?", (prev, h, row["id"]))
            prev = h
    conn.commit()
    conn.close()


def filled(tmp_path, key: bytes | None) -> tuple[Ledger, DeltaStore]:
    ledger, store = Ledger(tmp_path / "ledger.sqlite", key=key), DeltaStore(tmp_path / "deltas")
    for subject in ("Aurelio", "Bob", "Carl"):
        applied(ledger, store, subject)
        if subject == "Aurelio":
            ledger.note(1, {"recheck": {"edit": 1.0}})
    return ledger, store


def cut_last_edit(ledger: Ledger) -> None:
    sql(ledger, "DELETE FROM events WHERE edit_id = 3")
    sql(ledger, "DELETE FROM edits WHERE id = 3")


def test_without_a_key_a_rewrite_with_recomputed_hashes_passes(tmp_path):
    """The limit docs/security.md states: a plain chain is not proof against someone who rewrites the file."""
    ledger, store = filled(tmp_path, key=None)
    assert ledger.mode() == "sha256"
    sql(ledger, "UPDATE edits SET facts = replace(facts, 'Warsaw', 'Paris') WHERE id = 2")
    assert any("edit 2: content does not match its hash" in p for p in ledger.verify(store.root))
    rechain(ledger.path)
    assert ledger.verify(store.root) == []
    cut_last_edit(ledger)
    assert ledger.verify(store.root) == []
    ledger.close()


def test_with_a_key_a_rewrite_with_recomputed_hashes_is_caught(tmp_path):
    ledger, store = filled(tmp_path, key=KEY)
    assert ledger.mode() == "hmac-sha256" and ledger.verify(store.root) == []
    sql(ledger, "UPDATE edits SET facts = replace(facts, 'Warsaw', 'Paris') WHERE id = 2")
    rechain(ledger.path)  # plain hashes: every row after the change mismatches its MAC
    problems = ledger.verify(store.root)
    assert any(p.startswith("edit 2: content does not match its MAC") for p in problems), problems
    ledger.close()


def test_with_a_key_cutting_off_the_newest_edit_and_its_events_is_caught(tmp_path):
    ledger, store = filled(tmp_path, key=KEY)
    cut_last_edit(ledger)  # the chains stay intact: edits 1-2 and their events
    problems = ledger.verify(store.root)
    assert any(p.startswith("head of edits:") and "newest rows deleted" in p for p in problems), problems
    assert any(p.startswith("head of events:") for p in problems), problems
    sql(ledger, "DELETE FROM chain_heads")  # and the head records with them
    assert any("keyed head record is missing" in p for p in ledger.verify(store.root))
    ledger.close()


def test_with_a_key_a_forged_head_or_a_downgrade_is_caught(tmp_path):
    ledger, store = filled(tmp_path, key=KEY)
    cut_last_edit(ledger)
    sql(ledger, "UPDATE chain_heads SET count = count - 1, last = (SELECT row_hash FROM edits WHERE id = 2) "
                "WHERE chain = 'edits'")
    assert any("head of edits: the head record does not match its MAC" in p for p in ledger.verify(store.root))
    # Rewrite everything as a plain chain and mark the ledger plain: whoever holds the key still sees it.
    sql(ledger, "UPDATE ledger_meta SET value = 'sha256'")
    sql(ledger, "DELETE FROM chain_heads")
    rechain(ledger.path)
    problems = ledger.verify(store.root)
    assert any("a key is set but the ledger's chain is sha256" in p for p in problems), problems
    ledger.close()


def test_the_wrong_key_or_no_key_on_a_keyed_ledger(tmp_path):
    ledger, store = filled(tmp_path, key=KEY)
    ledger.close()
    wrong = Ledger(tmp_path / "ledger.sqlite", key=b"another key")
    assert any("content does not match its MAC" in p for p in wrong.verify(store.root))
    wrong.close()
    keyless = Ledger(tmp_path / "ledger.sqlite")
    assert [r["id"] for r in keyless.rows()] == [1, 2, 3]  # reading needs no key
    assert any("the ledger is keyed" in p for p in keyless.verify(store.root))
    with pytest.raises(RoseMemoryError, match="is keyed"):
        keyless.add("Dora", FACTS, "rose")
    assert len(keyless.rows()) == 3
    keyless.close()


def test_a_key_on_a_plain_ledger_with_rows_is_refused(tmp_path):
    ledger, store = filled(tmp_path, key=None)
    ledger.close()
    keyed = Ledger(tmp_path / "ledger.sqlite", key=KEY)
    with pytest.raises(RoseMemoryError, match="started without a key"):
        keyed.check_writable()
    assert any("a key is set but the ledger's chain is sha256" in p for p in keyed.verify(store.root))
    keyed.close()
    empty = Ledger(tmp_path / "new.sqlite")          # an empty plain ledger takes a key's mode
    empty.close()
    keyed = Ledger(tmp_path / "new.sqlite", key=KEY)
    keyed.check_writable()
    assert keyed.mode() == "hmac-sha256"
    keyed.close()


def test_the_key_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from rose_memory.stores.ledger import KEY_ENV, resolve_key

    monkeypatch.delenv(KEY_ENV, raising=False)
    assert resolve_key(None) is None
    monkeypatch.setenv(KEY_ENV, "from-env")
    assert resolve_key(None) == b"from-env"
    (tmp_path / "key").write_bytes(b"from-file\n")
    assert resolve_key(tmp_path / "key") == b"from-file"   # the file wins
    with pytest.raises(RoseMemoryError, match="cannot read the ledger key file"):
        resolve_key(tmp_path / "missing")


def test_cli_verify_uses_the_key_of_the_environment_or_the_home(tmp_path, monkeypatch, capsys):
    import json

    from rose_memory.cli import main as cli
    from rose_memory.stores.ledger import KEY_ENV

    ledger, _ = filled(tmp_path, key=KEY)
    ledger.close()
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert cli(["ledger", "verify", "--home", str(tmp_path)]) == 1
    assert "the ledger is keyed" in capsys.readouterr().out
    monkeypatch.setenv(KEY_ENV, KEY.decode())
    assert cli(["ledger", "verify", "--home", str(tmp_path)]) == 0
    monkeypatch.delenv(KEY_ENV)
    (tmp_path / "key").write_bytes(KEY)
    (tmp_path / "config.json").write_text(json.dumps({"ledger_key_file": str(tmp_path / "key")}))
    assert cli(["ledger", "verify", "--home", str(tmp_path)]) == 0
    cut_last_edit(SimpleNamespace(path=tmp_path / "ledger.sqlite"))
    capsys.readouterr()
    assert cli(["ledger", "verify", "--home", str(tmp_path)]) == 1
    assert "head of edits" in capsys.readouterr().out
