"""The memory's home folder and its lock file.

Several processes may open one home; each operation holds the home's lock file for its duration.
A process that finds the home busy says so on stderr and waits up to the home's lock_timeout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import RoseMemoryError

DEFAULT_LOCK_TIMEOUT = 60.0


def default_home() -> Path:
    return Path(os.environ.get("ROSE_MEMORY_HOME", "~/.rose-memory")).expanduser()


def check_home(home: Path) -> Path:
    """Refuse a home that cannot be a folder (a file, or under one) before anything is created."""
    for p in (home, *home.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == home else f"is under {p}, which is a file"
                raise RoseMemoryError(f"the memory home {home} {what}, not a folder; pass --home with a folder")
            break
    return home


def stored_lock_timeout(home: Path) -> float:
    """The home's lock_timeout, read before the lock is held (config.json is replaced atomically)."""
    try:
        value = json.loads((home / "config.json").read_text()).get("lock_timeout", DEFAULT_LOCK_TIMEOUT)
        return float(value)
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_LOCK_TIMEOUT


class HomeLock:
    """The home's lock file, held by this process (reentrant within it; the memory's thread lock keeps
    its threads apart). `timeout` None: the home's stored lock_timeout."""

    def __init__(self, home: Path, timeout: float | None = None):
        self.home = home
        self.held = 0  # nesting depth in this process
        self.timeout = timeout if timeout is not None else stored_lock_timeout(home)
        self._lock = FileLock(str(home / ".lock"), thread_local=False)
        self._gate = FileLock(str(home / ".lock.gate"), thread_local=False)

    def _take(self, timeout: float) -> None:
        """The lock file, through a gate: whoever waits for the lock holds the gate, so the holder's next
        operation queues behind it instead of taking the lock again at once (without the gate a process
        writing in a loop starves the other: filelock polls, and the releaser is always first)."""
        start = time.monotonic()
        self._gate.acquire(timeout=timeout, poll_interval=0.01)
        try:
            self._lock.acquire(timeout=max(0.0, timeout - (time.monotonic() - start)), poll_interval=0.01)
        finally:
            self._gate.release()

    @contextmanager
    def holding(self):
        """Hold the lock file for the block; waits for another process up to `timeout` seconds."""
        if self.held == 0:
            try:
                self._take(0)
            except Timeout:
                print(f"rose-memory: the memory at {self.home} is in use by another process; "
                      f"waiting up to {self.timeout:g} s", file=sys.stderr, flush=True)
                try:
                    self._take(self.timeout)
                except Timeout:
                    raise RoseMemoryError(
                        f"the memory at {self.home} stayed in use by another process for {self.timeout:g} s; "
                        "try again when it is done, or raise lock_timeout in the home's config.json"
                    ) from None
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            if self.held == 0:
                self._lock.release()

    def release(self) -> None:
        """Let go of the lock file if this process still has it and no operation holds it."""
        if self.held == 0 and self._lock.is_locked:
            self._lock.release(force=True)
