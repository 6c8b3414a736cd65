"""The edit ledger: one SQLite file (sqlite-utils, WAL) recording every edit and every status change.

Tamper evidence is a hash chain, not a signature: each edit row hashes its immutable content
with the previous row's hash, and each status change is an event row chained the same way.
A row's mutable columns (status, delta file, metrics, links) must equal the replay of its
events, so `verify()` notices an edited, deleted or reordered row or event, and a delta file
whose bytes no longer match the sha256 recorded for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils

from ..errors import RoseMemoryError

STATUSES = ("pending", "applied", "failed", "superseded", "forgotten", "consolidated")
TRANSITIONS = {
    "pending": {"applied", "failed"},
    "applied": {"superseded", "forgotten", "consolidated"},
    "consolidated": {"forgotten"},  # its facts were forgotten with the sleep delta that carried them
}
# Columns an event may set; everything else in a row is fixed when it is created.
MUTABLE = ("status", "reason", "applied_at", "delta_file", "delta_sha256", "metrics", "superseded_by", "consolidated_into")
GENESIS = "0" * 64


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _canon(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hash(fields: dict, prev: str) -> str:
    return hashlib.sha256((prev + _canon(fields)).encode()).hexdigest()


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
    """The edits and events tables of one memory. Thread-safe; writes are single transactions."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the threads of an agent; our lock serialises its use.
        self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), check_same_thread=False, timeout=30))
        self._lock = threading.RLock()
        self.db.enable_wal()
        self._create()

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
                yield
            except BaseException:
                self.db.rollback()
                raise
            self.db.commit()

    def _head(self, table: str) -> str:
        row = self.db.execute(f"SELECT row_hash FROM {table} ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else GENESIS

    def _next_id(self, table: str) -> int:
        return self.db.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}").fetchone()[0]

    def _append_event(self, edit_id: int, kind: str, from_status: str | None, to_status: str, data: dict) -> None:
        ev = {"id": self._next_id("events"), "edit_id": edit_id, "kind": kind, "from_status": from_status,
              "to_status": to_status, "at": now(), "data": data}
        prev = self._head("events")
        self.db["events"].insert(ev | {"data": _canon(data), "prev_hash": prev, "row_hash": _hash(_event_content(ev), prev)})

    # -- writes ---------------------------------------------------------------------------------

    def add(self, subject: str, facts: list[dict], method: str, namespace: str = "default",
            origin: str = "write") -> int:
        """Record a new edit as `pending` (committed before any weight changes) and return its id."""
        with self._write():
            row = {"id": self._next_id("edits"), "namespace": namespace, "subject": subject, "facts": facts,
                   "method": method, "origin": origin, "created_at": now()}
            prev = self._head("edits")
            self.db["edits"].insert(row | {"facts": _canon(facts), "status": "pending", "prev_hash": prev,
                                           "row_hash": _hash(_edit_content(row), prev)})
            self._append_event(row["id"], "status", None, "pending", {})
            return row["id"]

    def transition(self, changes: list[tuple[int, str, dict]]) -> None:
        """Apply status changes `(edit_id, new_status, fields)` in one transaction, or none of them.

        `fields` may set reason, delta_file, delta_sha256, metrics, superseded_by, consolidated_into.
        """
        with self._write():
            for edit_id, to, fields in changes:
                self._transition(edit_id, to, dict(fields))

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
        problems += self._verify_chain("edit", edits, _edit_content)
        problems += self._verify_chain("event", events, _event_content)
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
    def _verify_chain(what: str, rows: list[dict], content) -> list[str]:
        problems, prev = [], GENESIS
        for i, row in enumerate(rows):
            if row["id"] != i + 1:
                problems.append(f"{what} {row['id']}: expected id {i + 1} here (rows deleted or reordered)")
            if row["prev_hash"] != prev:
                problems.append(f"{what} {row['id']}: prev_hash does not match the row before it (deleted or reordered)")
            try:
                ok = row["row_hash"] == _hash(content(row), row["prev_hash"])
            except (TypeError, ValueError, KeyError):
                ok = False
            if not ok:
                problems.append(f"{what} {row['id']}: content does not match its hash (row edited)")
            prev = row["row_hash"]
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
