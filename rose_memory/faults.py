"""Named crash points for crash-safety tests: ROSE_MEMORY_CRASH_AT=<name> ends the process there.

The process exits with os._exit (no cleanup, no flush, as a kill would), so a test can check
that reopening the memory recovers from that exact point. The points, in the order a write,
a forget or a sleep reaches them (tests/test_crash.py kills at each):

write   write:start (validated, before the ledger row), write:pending (the pending row
        committed), write:editing (the superseded edits out of the weights, the edit not yet
        computed), edit:value_step (inside the edit's value optimisation), write:edited (the
        Delta computed, nothing saved), deltas:tmp_written (the delta file written under its .tmp
        name), write:saved (the delta file in place, the row still pending), write:composed (the
        new delta in the weights, unverified), write:checked (verified, before the commit),
        ledger:transaction (inside the commit's transaction, every change made, none
        committed), write:committed (after the commit)
forget  forget:start, forget:composed (the edit out of the weights, the ledger unchanged),
        ledger:transaction, forget:committed
sleep   sleep:pending (the pending row committed), sleep:gate, sleep:transfer_set, sleep:trained,
        sleep:delta_scale (each after its ledger note), sleep:saved (the delta file in place),
        sleep:committed
"""

from __future__ import annotations

import os

ENV = "ROSE_MEMORY_CRASH_AT"
EXIT_CODE = 86

WRITE_POINTS = ("write:start", "write:pending", "write:editing", "edit:value_step", "write:edited",
                "deltas:tmp_written", "write:saved", "write:composed", "write:checked", "ledger:transaction",
                "write:committed")
FORGET_POINTS = ("forget:start", "forget:composed", "ledger:transaction", "forget:committed")
SLEEP_POINTS = ("sleep:pending", "sleep:gate", "sleep:transfer_set", "sleep:trained", "sleep:delta_scale",
                "sleep:saved", "sleep:committed")


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os._exit(EXIT_CODE)
