"""The edit ledger: one SQLite file (sqlite-utils, WAL) recording every edit and every status change.

Tamper evidence is a hash chain: each edit row hashes its immutable content with the previous
row's hash, and each status change is an event row chained the same way. A row's mutable
columns (status, delta file, metrics, links) must equal the replay of its events, so
`verify()` notices an edited, deleted or reordered row or event, and a delta file whose bytes
no longer match the sha256 recorded for it.

Without a key the chain is plain SHA-256: it catches accidents and careless edits, not someone
who rewrites rows and recomputes every hash after them, or deletes the newest rows. With a key
($ROSE_MEMORY_LEDGER_KEY, or the memory's `ledger_key_file`) every hash is an HMAC-SHA256 under
it, and a keyed head record (each chain's row count and last MAC, itself MAC'd) is updated in
the same transaction as each append, so rewriting rows or cutting the newest ones off is caught
by whoever holds the key. docs/security.md says what each mode does and does not detect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from .. import faults
from ..errors import RoseMemoryError

KEY_ENV = "ROSE_MEMORY_LEDGER_KEY"
PLAIN, KEYED = "sha256", "hmac-sha256"
CHAINS = ("edits", "events")

STATUSES = ("pending", "applied", "failed", "superseded", "forgotten", "consolidated")
TRANSITIONS = {
    "pending": {"applied", "failed"},
    "applied": {"superseded", "forgotten", "consolidated"},
    "consolidated": {"forgotten"},  # its facts were forgotten with the sleep delta that carried them
    "superseded": {"forgotten"},    # what its write told was forgotten from the later edit that carried it
}
# Columns an event may set; everything else in a row is fixed when it is created.
MUTABLE = ("status", "reason", "applied_at", "delta_file", "delta_sha256", "metrics", "superseded_by", "consolidated_into")
GENESIS = "0" * 64


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _canon(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hash(fields: dict, prev: str, key: bytes | None = None) -> str:
    data = (prev + _canon(fields)).encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()


def _head_mac(key: bytes, chain: str, count: int, last: str) -> str:
    return hmac.new(key, f"head|{chain}|{count}|{last}".encode(), hashlib.sha256).hexdigest()


def resolve_key(key_file: str | os.PathLike | None = None) -> bytes | None:
    """The ledger key: the contents of `key_file` if given (surrounding whitespace dropped), else
    $ROSE_MEMORY_LEDGER_KEY, else None (a plain hash chain)."""
    if key_file:
        path = Path(key_file).expanduser()
        try:
            key = path.read_bytes().strip()
        except OSError as err:
            raise RoseMemoryError(f"cannot read the ledger key file {path}: {err.strerror or err}") from None
        if not key:
            raise RoseMemoryError(f"the ledger key file {path} is empty")
        return key
    value = os.environ.get(KEY_ENV, "")
    return value.encode() if value else None


def _edit_content(row: dict) -> dict:
    facts = row["facts"] if isinstance(row["facts"], list) else json.loads(row["facts"])
    return {k: row[k] for k in ("id", "namespace", "subject", "method", "origin", "created_at")} | {"facts": facts}


def _event_content(ev: dict) -> dict:
    data = ev["data"] if isinstance(ev["data"], dict) else json.loads(ev["data"])
    return {k: ev[k] for k in ("id", "edit_id", "kind", "from_status", "to_status", "at")} | {"data": data}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Ledger:
    """The edits and events tables of one memory. Thread-safe; writes are single transactions.

    `key`: bytes for an HMAC chain (see the module docstring); None reads any ledger and writes
    only a plain one.
    """

    def __init__(self, path: str | os.PathLike, key: bytes | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = key or None
        # One connection shared by the threads of an agent; our lock serialises its use.
        try:
            self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), check_same_thread=False, timeout=30))
            self._lock = threading.RLock()
            self.db.enable_wal()
            self._create()
        except sqlite3.DatabaseError as err:
            raise RoseMemoryError(f"{self.path} is not a readable ledger ({err}); restore it or use another home") from None

    def _create(self) -> None:
        self.db["edits"].create(
            {
                "id": int, "namespace": str, "subject": str, "facts": str, "method": str, "origin": str,
                "status": str, "reason": str, "created_at": str, "applied_at": str,
                "delta_file": str, "delta_sha256": str, "metrics": str,
                "superseded_by": int, "consolidated_into": int, "prev_hash": str, "row_hash": str,
            },
            pk="id", not_null=["namespace", "subject", "facts", "method", "origin", "status", "created_at",
                               "prev_hash", "row_hash"],
            if_not_exists=True,
        )
        self.db["events"].create(
            {
                "id": int, "edit_id": int, "kind": str, "from_status": str, "to_status": str,
                "data": str, "at": str, "prev_hash": str, "row_hash": str,
            },
            pk="id", not_null=["edit_id", "kind", "to_status", "data", "at", "prev_hash", "row_hash"],
            if_not_exists=True,
        )
        self.db["edits"].create_index(["subject", "status"], if_not_exists=True)
        self.db["events"].create_index(["edit_id"], if_not_exists=True)
        self.db.execute("CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS chain_heads (chain TEXT PRIMARY KEY, count INTEGER NOT NULL, "
                        "last TEXT NOT NULL, mac TEXT NOT NULL)")
        if self.mode() is None:  # a new ledger takes the mode of its key; one from before modes were recorded is plain
            with self._lock:
                self.db.execute("INSERT OR IGNORE INTO ledger_meta VALUES ('chain', ?)",
                                [KEYED if self.key and self._empty() else PLAIN])
                self.db.commit()

    def mode(self) -> str | None:
        """How the chain is hashed: 'sha256' (plain) or 'hmac-sha256' (keyed)."""
        row = self.db.execute("SELECT value FROM ledger_meta WHERE name = 'chain'").fetchone()
        return row[0] if row else None

    def _empty(self) -> bool:
        return not self.db.execute("SELECT 1 FROM edits UNION ALL SELECT 1 FROM events LIMIT 1").fetchone()

    def check_writable(self) -> None:
        """Refuse to write a chain with the wrong key: a keyed ledger without its key, or a plain ledger
        with rows under a key (an empty one takes the key's mode)."""
        with self._lock:
            self._settle_mode()
            self.db.commit()

    def _settle_mode(self) -> None:
        mode, want = self.mode(), KEYED if self.key else PLAIN
        if mode == want:
            return
        if self._empty():
            self.db.execute("UPDATE ledger_meta SET value = ? WHERE name = 'chain'", [want])
            self.db.execute("DELETE FROM chain_heads")
        elif mode == KEYED:
            raise RoseMemoryError(f"the ledger at {self.path} is keyed (an HMAC chain); set ${KEY_ENV} or the "
                                  "home's ledger_key_file to the key it was written with")
        else:
            raise RoseMemoryError(f"the ledger at {self.path} was started without a key (a plain hash chain); "
                                  f"unset ${KEY_ENV} (and ledger_key_file) for this home, or start a new home to use a key")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def _write(self):
        # IMMEDIATE takes the write lock up front, so reading the chain head and appending to it
        # cannot interleave with another writer (thread or process).
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self._settle_mode()
                yield
            except BaseException:
                self.db.rollback()
                raise
            self.db.commit()

    def _head(self, table: str) -> str:
        row = self.db.execute(f"SELECT row_hash FROM {table} ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else GENESIS

    def _set_head(self, table: str, count: int, last: str) -> None:
        if self.key:
            self.db.execute("INSERT OR REPLACE INTO chain_heads VALUES (?, ?, ?, ?)",
                            [table, count, last, _head_mac(self.key, table, count, last)])

    def _next_id(self, table: str) -> int:
        return self.db.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}").fetchone()[0]

    def _append_event(self, edit_id: int, kind: str, from_status: str | None, to_status: str, data: dict) -> None:
        ev = {"id": self._next_id("events"), "edit_id": edit_id, "kind": kind, "from_status": from_status,
              "to_status": to_status, "at": now(), "data": data}
        prev = self._head("events")
        row_hash = _hash(_event_content(ev), prev, self.key)
        self.db["events"].insert(ev | {"data": _canon(data), "prev_hash": prev, "row_hash": row_hash})
        self._set_head("events", ev["id"], row_hash)

    # -- writes ---------------------------------------------------------------------------------

    def add(self, subject: str, facts: list[dict], method: str, namespace: str = "default",
            origin: str = "write") -> int:
        """Record a new edit as `pending` (committed before any weight changes) and return its id."""
        with self._write():
            row = {"id": self._next_id("edits"), "namespace": namespace, "subject": subject, "facts": facts,
                   "method": method, "origin": origin, "created_at": now()}
            prev = self._head("edits")
            row_hash = _hash(_edit_content(row), prev, self.key)
            self.db["edits"].insert(row | {"facts": _canon(facts), "status": "pending", "prev_hash": prev,
                                           "row_hash": row_hash})
            self._set_head("edits", row["id"], row_hash)
            self._append_event(row["id"], "status", None, "pending", {})
            return row["id"]

    def transition(self, changes: list[tuple[int, str, dict]]) -> None:
        """Apply status changes `(edit_id, new_status, fields)` in one transaction, or none of them.

        `fields` may set reason, delta_file, delta_sha256, metrics, superseded_by, consolidated_into.
        """
        with self._write():
            for edit_id, to, fields in changes:
                self._transition(edit_id, to, dict(fields))
            faults.point("ledger:transaction")  # every change made, none committed

    def _transition(self, edit_id: int, to: str, fields: dict) -> None:
        current = self.get(edit_id)["status"]
        if to not in TRANSITIONS.get(current, ()):
            raise RoseMemoryError(f"edit {edit_id} is {current}; it cannot become {to}")
        bad = set(fields) - set(MUTABLE)
        if bad:
            raise RoseMemoryError(f"cannot set {sorted(bad)} on an edit; settable: {', '.join(MUTABLE[1:])}")
        if to == "applied":
            fields.setdefault("applied_at", now())
        fields["status"] = to
        self._append_event(edit_id, "status", current, to, fields)
        self.db["edits"].update(edit_id, {k: _canon(v) if k == "metrics" else v for k, v in fields.items()})

    def note(self, edit_id: int, data: dict) -> None:
        """Append a non-status event (e.g. a re-verification result) to the chained history."""
        with self._write():
            status = self.get(edit_id)["status"]
            self._append_event(edit_id, "note", status, status, data)

    # -- reads ----------------------------------------------------------------------------------

    def state(self) -> int:
        """Changes with every write to the ledger (from any process): the newest event's id."""
        with self._lock:
            return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]

    def count(self, namespace: str, origin: str, since: str) -> int:
        """Rows of `origin` in `namespace` created at or after `since` (an ISO time, as `now()` writes)."""
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM edits WHERE namespace = ? AND origin = ? AND created_at >= ?",
                                   [namespace, origin, since]).fetchone()[0]

    @staticmethod
    def _decode(row: dict) -> dict:
        row = dict(row)
        row["facts"] = json.loads(row["facts"])
        row["metrics"] = json.loads(row["metrics"]) if row.get("metrics") else None
        return row

    def get(self, edit_id: int) -> dict:
        with self._lock:
            rows = list(self.db["edits"].rows_where("id = ?", [edit_id]))
        if not rows:
            raise RoseMemoryError(f"no edit with id {edit_id}; list them with `rose-memory ledger list`")
        return self._decode(rows[0])

    def rows(self, status: str | None = None, subject: str | None = None, namespace: str | None = None) -> list[dict]:
        """Edit rows in ledger order, optionally filtered."""
        if status is not None and status not in STATUSES:
            raise RoseMemoryError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        where, args = [], []
        for col, val in (("status", status), ("subject", subject), ("namespace", namespace)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        with self._lock:
            found = self.db["edits"].rows_where(" AND ".join(where) or None, args, order_by="id")
            return [self._decode(r) for r in found]

    def events(self, edit_id: int | None = None) -> list[dict]:
        with self._lock:
            found = self.db["events"].rows_where("edit_id = ?" if edit_id is not None else None,
                                                 [edit_id] if edit_id is not None else [], order_by="id")
            return [dict(e) | {"data": json.loads(e["data"])} for e in found]

    # -- audit ----------------------------------------------------------------------------------

    def verify(self, delta_dir: str | os.PathLike | None = None) -> list[str]:
        """Every inconsistency found, each naming its row; an empty list means the ledger is intact."""
        problems: list[str] = []
        with self._lock:
            edits = [dict(r) for r in self.db["edits"].rows_where(order_by="rowid")]
            events = [dict(e) for e in self.db["events"].rows_where(order_by="rowid")]
        mode = self.mode()
        key = self.key if mode == KEYED else None
        if mode == KEYED and not self.key:
            problems.append(f"the ledger is keyed (an HMAC chain); set ${KEY_ENV} or the home's ledger_key_file "
                            "to check its MACs")
        elif mode != KEYED and self.key and (edits or events):
            problems.append(f"a key is set but the ledger's chain is {mode or 'unmarked'}, not keyed: it was written "
                            "without the key, or its rows were rewritten as a plain chain")
        if mode == KEYED and not self.key:
            problems += self._verify_links("edit", edits) + self._verify_links("event", events)
        else:
            problems += self._verify_chain("edit", edits, _edit_content, key)
            problems += self._verify_chain("event", events, _event_content, key)
        if key:
            problems += self._verify_heads({"edits": edits, "events": events})
        state: dict[int, dict] = {}
        for ev in events:
            eid, data = ev["edit_id"], json.loads(ev["data"])
            if ev["kind"] == "note":
                continue
            before = state.get(eid, {}).get("status")
            if before != ev["from_status"] or (before is None) != (ev["to_status"] == "pending") or (
                    before is not None and ev["to_status"] not in TRANSITIONS.get(before, ())):
                problems.append(f"event {ev['id']}: edit {eid} cannot go {ev['from_status']} -> {ev['to_status']}")
            state.setdefault(eid, {"status": None}).update(data | {"status": ev["to_status"]})
        for row in edits:
            expect = state.pop(row["id"], None)
            if expect is None:
                problems.append(f"edit {row['id']}: no events recorded; row inserted outside the ledger")
                continue
            for col in MUTABLE:
                have = json.loads(row[col]) if col == "metrics" and row[col] else row[col]
                if have != expect.get(col):
                    problems.append(f"edit {row['id']}: {col} is {have!r} but its events say {expect.get(col)!r}")
            problems += self._verify_file(row, delta_dir)
        for eid in sorted(state):
            problems.append(f"edit {eid}: has events but no row (row deleted)")
        return problems

    @staticmethod
    def _verify_links(what: str, rows: list[dict]) -> list[str]:
        problems, prev = [], GENESIS
        for i, row in enumerate(rows):
            if row["id"] != i + 1:
                problems.append(f"{what} {row['id']}: expected id {i + 1} here (rows deleted or reordered)")
            if row["prev_hash"] != prev:
                problems.append(f"{what} {row['id']}: prev_hash does not match the row before it (deleted or reordered)")
            prev = row["row_hash"]
        return problems

    @classmethod
    def _verify_chain(cls, what: str, rows: list[dict], content, key: bytes | None = None) -> list[str]:
        problems = cls._verify_links(what, rows)
        for row in rows:
            try:
                ok = hmac.compare_digest(row["row_hash"], _hash(content(row), row["prev_hash"], key))
            except (TypeError, ValueError, KeyError):
                ok = False
            if not ok:
                problems.append(f"{what} {row['id']}: content does not match its {'MAC' if key else 'hash'} (row edited)")
        return problems

    def _verify_heads(self, chains: dict[str, list[dict]]) -> list[str]:
        """The keyed head records against the chains: catches the newest rows cut off (count, last MAC)."""
        problems = []
        with self._lock:
            heads = {r[0]: r[1:] for r in self.db.execute("SELECT chain, count, last, mac FROM chain_heads")}
        for chain, rows in chains.items():
            head = heads.get(chain)
            if head is None:
                if rows:
                    problems.append(f"head of {chain}: the keyed head record is missing (deleted)")
                continue
            count, last, mac = head
            if not hmac.compare_digest(str(mac), _head_mac(self.key, chain, count, str(last))):
                problems.append(f"head of {chain}: the head record does not match its MAC (edited)")
            elif count != len(rows) or (rows and last != rows[-1]["row_hash"]):
                problems.append(f"head of {chain}: the head records {count} rows ending in {str(last)[:12]}..., "
                                f"the table has {len(rows)} (newest rows deleted or replaced)")
        return problems

    @staticmethod
    def _verify_file(row: dict, delta_dir) -> list[str]:
        if not row["delta_file"] or delta_dir is None:
            return []
        path = Path(delta_dir) / row["delta_file"]
        if not path.is_file():
            return [f"edit {row['id']}: delta file {row['delta_file']} is missing"]
        if file_sha256(path) != row["delta_sha256"]:
            return [f"edit {row['id']}: delta file {row['delta_file']} changed on disk (sha256 differs)"]
        return []
