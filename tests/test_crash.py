"""A child process killed at each named crash point of a write and of a forget (rose_memory/faults.py),
on the tiny random model; reopening the home must leave a ledger that verifies, no pending row,
and weights equal to base + the applied deltas of each namespace. The sleep's points are killed
in tests/test_sleep.py; random SIGKILLs are benchmarks/crash_kill.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from rose_memory.faults import ENV, EXIT_CODE, FORGET_POINTS, WRITE_POINTS
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_model
from rose_memory.tiny import base_plus, tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

CHILD = textwrap.dedent("""
    import sys
    from rose_memory.memory import ParametricMemory

    with ParametricMemory(sys.argv[1]) as mem:
        if sys.argv[2] == "write":   # supersedes edit 1 (alice's), carrying its other fact
            mem.write("Aurelio", [("lives in the city of", "Krakow")], namespace="alice")
        else:
            mem.forget(1, namespace="alice")
    print("not reached")
""")
CASES = [("write", p) for p in WRITE_POINTS] + [("forget", p) for p in FORGET_POINTS]


@pytest.fixture(scope="module")
def base(tiny_dir):
    return {n: p.detach().clone() for n, p in load_model(str(tiny_dir)).model.named_parameters()}


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_dir):
    """Edit 1 in namespace alice (two facts), edit 2 in default."""
    home = tiny_home(tmp_path_factory.mktemp("crash") / "home", tiny_dir)
    with ParametricMemory(home) as mem:
        assert mem.write("Aurelio", [("lives in the city of", "Warsaw"), ("works as a", "nurse")],
                         namespace="alice").status == "applied"
        assert mem.write("Bruno", [("works as a", "baker")]).status == "applied"
    return home



def test_every_point_is_reached(written, tmp_path):
    """Each point's name is spelt as the code spells it: a run that sets none of them completes."""
    source = "".join(open(os.path.join(os.path.dirname(__file__), "..", "rose_memory", f)).read()
                     for f in ("memory.py", "editing/targets.py"))
    source += open(os.path.join(os.path.dirname(__file__), "..", "stores", "ledger.py")).read()
    source += open(os.path.join(os.path.dirname(__file__), "..", "stores", "deltas.py")).read()
    for point in set(WRITE_POINTS) | set(FORGET_POINTS):
        assert f'faults.point("{point}")' in source, point
    assert len(set(WRITE_POINTS) | set(FORGET_POINTS)) >= 10


@pytest.mark.parametrize("action, point", CASES, ids=[f"{a}-{p}" for a, p in CASES])
def test_a_kill_at_each_point_recovers(written, base, tmp_path, action, point):
    home = shutil.copytree(written, tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(home), action], capture_output=True, text=True,
                          timeout=600, env=os.environ | {ENV: point, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert proc.returncode == EXIT_CODE, proc.stderr[-3000:]
    assert "not reached" not in proc.stdout
    with ParametricMemory(home) as mem:
        assert mem.verify() == []
        rows = {r["id"]: r for r in mem.edits()}
        assert not [r for r in rows.values() if r["status"] == "pending"]
        assert not list((home / "deltas").glob("*.tmp"))
        committed = point in ("write:committed", "forget:committed")
        if action == "write":
            if point == "write:start":
                assert list(rows) == [1, 2]                       # killed before its row
            else:
                assert rows[3]["status"] == ("applied" if committed else "failed")
                if not committed:
                    assert "interrupted" in rows[3]["reason"]
                    assert not (home / "deltas" / "000003.safetensors").exists()
            assert rows[1]["status"] == ("superseded" if committed else "applied")
        else:
            assert rows[1]["status"] == ("forgotten" if committed else "applied")
        assert rows[2]["status"] == "applied"
        for namespace in ("alice", "default"):
            mem.use(namespace)
            applied = [i for i, r in rows.items() if r["status"] == "applied" and r["namespace"] == namespace]
            assert list(mem.live) == applied
            params = {n: p.detach() for n, p in mem.lm.model.named_parameters()}
            want = base_plus(base, [mem.live[i] for i in applied])
            assert all(torch.equal(params[n], want[n]) for n in want), namespace
