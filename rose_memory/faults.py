"""Named crash points for crash-safety tests: ROSE_MEMORY_CRASH_AT=<name> ends the process there.

The process exits with os._exit (no cleanup, no flush, as a kill would), so a test can check
that reopening the memory recovers from that exact point.
"""

from __future__ import annotations

import os

ENV = "ROSE_MEMORY_CRASH_AT"
EXIT_CODE = 86


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os._exit(EXIT_CODE)
