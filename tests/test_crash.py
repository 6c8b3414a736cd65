"""A child process killed at each named crash point of a write, a forget and a sleep
(rose_memory/faults.py), on the tiny random model; reopening the home must leave a ledger that
verifies, no pending row, and weights equal to base + the applied deltas of each namespace.
Random SIGKILLs are benchmarks/crash_kill.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from rose_memory.faults import ENV, EXIT_CODE, FORGET_POINTS, SLEEP_POINTS, WRITE_POINTS
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_model
from rose_memory.tiny import base_plus, tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

CHILD = textwrap.dedent("""
    import json
    import sys
    from rose_memory.memory import ParametricMemory

    import rose_memory.sleep as S

    def passes(lm, facts, cfg):  # the tiny model recalls nothing: the gate passes every fact, so the sleep reaches its commit
        return [{"prompt": f.request.prompt, "object": f.request.target, "edit": True, "held_out": 1.0,
                 "passed": True, "answers": []} for f in facts]

    S.check_facts = passes
    with ParametricMemory(sys.argv[1], sleep=json.loads(sys.argv[3])) as mem:
        if sys.argv[2] == "write":   # supersedes edit 1 (alice's), carrying its other fact
            mem.write("Aurelio", [("lives in the city of", "Krakow")], namespace="alice")
        elif sys.argv[2] == "forget":
            mem.forget(1, namespace="alice")
        else:                        # sleeps Bruno (edit 2, default namespace)
            mem.consolidate()
    print("not reached")
""")
# A sleep that trains a little and measures little: what is tested is what a kill leaves behind.
# A free delta, so that the passing gate consolidates the facts and the wake edit's removal is on the path
# (the default delta reads the wake edit's trace and never steps it down).
SLEEP = {"model_questions": 0, "samples": 0, "other_names": 2, "generic_negatives": 2, "scale_steps": [0.0],
         "canary_names": 2, "delta_scales": [1.0], "canary_refuse": False, "steps": 2, "inputs": "free", "modules": "mlp"}
CASES = ([("write", p) for p in WRITE_POINTS] + [("forget", p) for p in FORGET_POINTS]
         + [("sleep", p) for p in SLEEP_POINTS])


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
    sleep = open(os.path.join(os.path.dirname(__file__), "..", "rose_memory", "consolidation.py")).read()
    notes = {f"sleep:{k}" for k in ("gate", "transfer_set", "trained", "delta_scale")}  # faults.point(f"sleep:{kind}") per note
    for point in set(SLEEP_POINTS) - notes:
        assert f'faults.point("{point}")' in sleep, point
    assert 'faults.point(f"sleep:{kind}")' in sleep


@pytest.mark.parametrize("action, point", CASES, ids=[f"{a}-{p}" for a, p in CASES])
def test_a_kill_at_each_point_recovers(written, base, tmp_path, action, point):
    home = shutil.copytree(written, tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(home), action, json.dumps(SLEEP)], capture_output=True, text=True,
                          timeout=600, env=os.environ | {ENV: point, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert proc.returncode == EXIT_CODE, proc.stderr[-3000:]
    assert "not reached" not in proc.stdout
    with ParametricMemory(home) as mem:
        assert mem.verify() == []
        rows = {r["id"]: r for r in mem.edits()}
        assert not [r for r in rows.values() if r["status"] == "pending"]
        assert not list((home / "deltas").glob("*.tmp"))
        committed = point in ("write:committed", "forget:committed", "sleep:committed")
        if action == "write":
            if point == "write:start":
                assert list(rows) == [1, 2]                       # killed before its row
            else:
                assert rows[3]["status"] == ("applied" if committed else "failed")
                if not committed:
                    assert "interrupted" in rows[3]["reason"]
                    assert not (home / "deltas" / "000003.safetensors").exists()
            assert rows[1]["status"] == ("superseded" if committed else "applied")
        elif action == "forget":
            assert rows[1]["status"] == ("forgotten" if committed else "applied")
        if action == "sleep":
            assert rows[3]["origin"] == "sleep" and rows[3]["status"] == ("applied" if committed else "failed")
            assert rows[2]["status"] == ("consolidated" if committed else "applied")
            assert rows[1]["status"] == "applied"
        else:
            assert rows[2]["status"] == "applied"
        for namespace in ("alice", "default"):
            mem.use(namespace)
            applied = [i for i, r in rows.items() if r["status"] == "applied" and r["namespace"] == namespace]
            assert list(mem.live) == applied
            params = {n: p.detach() for n, p in mem.lm.model.named_parameters()}
            want = base_plus(base, [mem.live[i] for i in applied])
            assert all(torch.equal(params[n], want[n]) for n in want), namespace


REWRITE_CHILD = textwrap.dedent("""
    import sys
    from rose_memory.memory import ParametricMemory

    with ParametricMemory(sys.argv[1]) as mem:
        mem.forget(1, namespace="alice")  # edit 3 holds what edit 1 told: it goes, its own fact is written again
    print("not reached")
""")
REWRITE_POINTS = ("write:pending", "write:edited", "write:checked", "write:committed")


@pytest.fixture(scope="module")
def carried(tmp_path_factory, written):
    """`written` plus edit 3 (alice): a new fact about Aurelio, carrying edit 1's two facts (1 superseded)."""
    home = shutil.copytree(written, tmp_path_factory.mktemp("carried") / "home")
    with ParametricMemory(home) as mem:
        rec = mem.write("Aurelio", [("has a pet", "cat")], namespace="alice")
        assert rec.status == "applied" and rec.superseded == [1]
    return home


@pytest.mark.parametrize("point", REWRITE_POINTS)
def test_a_kill_while_forget_writes_the_other_facts_again_loses_neither(carried, base, tmp_path, point):
    """The forget commits in the rewrite's own transaction: killed before it, nothing was forgotten."""
    home = shutil.copytree(carried, tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", REWRITE_CHILD, str(home)], capture_output=True, text=True,
                          timeout=600, env=os.environ | {ENV: point, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    assert proc.returncode == EXIT_CODE, proc.stderr[-3000:]
    with ParametricMemory(home) as mem:
        assert mem.verify() == []
        rows = {r["id"]: r for r in mem.edits()}
        committed = point == "write:committed"
        assert rows[4]["origin"] == "rewrite" and [f["object"] for f in rows[4]["facts"]] == ["cat"]
        assert rows[4]["status"] == ("applied" if committed else "failed")
        assert rows[3]["status"] == ("forgotten" if committed else "applied")
        assert rows[1]["status"] == ("forgotten" if committed else "superseded")
        mem.use("alice")
        assert list(mem.live) == ([4] if committed else [3])
        params = {n: p.detach() for n, p in mem.lm.model.named_parameters()}
        want = base_plus(base, list(mem.live.values()))
        assert all(torch.equal(params[n], want[n]) for n in want)
