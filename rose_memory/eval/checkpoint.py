"""A long eval's progress on disk (`rose-memory eval --checkpoint DIR`), so a killed run goes on where it stopped.

After each subject the runner writes `state.json` in DIR: the settings that make the run what it
is (model, data, locality file, mode, seed, editing, sleep and memory settings; a fingerprint of
them), each finished method's whole result, and for the method under way the subjects done, the
probe outcomes so far and the write counters. A sequential run's memory lives in DIR too
(`memory-<method>/`, a normal memory home), so its ledger, deltas and sleeps survive with it.

Rerunning the same command with the same DIR reads the finished methods back, starts the method
under way at the first subject not done (its memory reopened: the weights recomposed from the
ledger), and gives the same figures as an uninterrupted run: every write and sleep seeds its own
draws. A run killed in the middle of a subject repeats that subject; in sequential mode the
facts it had written are already remembered and are not written twice. Another command with the
same DIR is refused rather than mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RoseMemoryError

if TYPE_CHECKING:
    from .runner import MethodResult

STATE = "state.json"


def _plain(value: Any) -> Any:
    """JSON's view of `value` (tuples become lists), so that stored and fresh settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class Checkpoint:
    """The progress of one eval run in `folder`; `settings` are what must match to continue it."""

    def __init__(self, folder: str | os.PathLike, settings: dict):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise RoseMemoryError(f"--checkpoint {self.folder} is a file; give a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RoseMemoryError(f"--checkpoint {self.folder}: cannot create the folder ({err})") from None
        self.settings = _plain(settings)
        self.fingerprint = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()
        self.state: dict = {"fingerprint": self.fingerprint, "settings": self.settings, "finished": {}, "current": None}
        path = self.folder / STATE
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise RoseMemoryError(f"--checkpoint {self.folder}: {STATE} cannot be read ({err}); "
                                      f"delete the folder to start over") from None
            if stored.get("fingerprint") != self.fingerprint:
                old = stored.get("settings") or {}
                differ = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
                raise RoseMemoryError(f"--checkpoint {self.folder} holds the progress of a run with other settings "
                                      f"({', '.join(differ) or 'unreadable'} differ); give another folder, or delete "
                                      f"this one to start over")
            self.state = stored
        else:  # the settings go down before anything else does, so another command cannot continue this run
            self._save()

    # ---- reading ------------------------------------------------------------------------------
    def finished(self, method: str) -> "MethodResult | None":
        from .runner import MethodResult

        data = self.state["finished"].get(method)
        return MethodResult(**data) if data is not None else None

    def progress(self, method: str) -> dict | None:
        """{"next": first subject not done, "tally": ..., "write_seconds", "writes", "sleeps"}, or None."""
        cur = self.state.get("current")
        return cur if cur is not None and cur.get("method") == method else None

    def memory_home(self, method: str) -> Path:
        return self.folder / f"memory-{method.replace('+', '-')}"

    # ---- writing ------------------------------------------------------------------------------
    def save_progress(self, method: str, next_subject: int, tally: dict, write_seconds: float, writes: int,
                      sleeps: list[dict]) -> None:
        self.state["current"] = {"method": method, "next": next_subject, "tally": tally,
                                 "write_seconds": write_seconds, "writes": writes, "sleeps": sleeps}
        self._save()

    def save_finished(self, result: "MethodResult") -> None:
        self.state["finished"][result.method] = dataclasses.asdict(result)
        self.state["current"] = None
        self._save()

    def _save(self) -> None:
        """Written whole to a new file that then replaces the old one: a kill leaves one or the other."""
        tmp = self.folder / (STATE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.state, f, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / STATE)
