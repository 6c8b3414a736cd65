"""Two processes on one home, and concurrent tool calls in one process (tiny random model)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from filelock import FileLock

from rose_memory.errors import RoseMemoryError
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_model
from rose_memory.tiny import tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

WRITER = textwrap.dedent("""
    import sys
    from rose_memory.memory import ParametricMemory

    home, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with ParametricMemory(home) as mem:
        for i in range(n):
            rec = mem.write(f"Person {tag}{i}", [("lives in the city of", f"City{i}")])
            assert rec.status == "applied", rec
            with mem.holding("default"):  # the weights hold every applied edit, whichever process wrote it
                assert list(mem.live) == [r["id"] for r in mem.edits(status="applied")]
    print("done", tag)
""")


@pytest.fixture
def home(tmp_path, tiny_dir):
    return tiny_home(tmp_path / "home", tiny_dir, limits={"max_writes_per_minute": None})


def test_two_processes_writing_at_once_lose_nothing(home, tiny_dir):
    n = 50
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    with ParametricMemory(home) as mem:  # warm the tiny model's statistics cache once
        mem.write("Warm Up", [("works as a", "tester")])
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(home), tag, str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for tag in "AB"]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert out.startswith("done")
    base = {k: v.detach().clone() for k, v in load_model(str(tiny_dir)).model.named_parameters()}
    with ParametricMemory(home) as mem:
        assert mem.verify() == []
        rows = mem.edits()
        assert len(rows) == 2 * n + 1 and {r["status"] for r in rows} == {"applied"}
        subjects = [r["subject"] for r in rows[1:]]
        assert sorted(subjects) == sorted(f"Person {t}{i}" for t in "AB" for i in range(n))
        assert [s for s in subjects if s.startswith("Person A")] == [f"Person A{i}" for i in range(n)]
        a_rows = [i for i, s in enumerate(subjects) if s.startswith("Person A")]
        assert a_rows != list(range(n)) and a_rows != list(range(n, 2 * n)), "the writers did not interleave"
        params = dict(mem.lm.model.named_parameters())
        for name in {k for d in mem.live.values() for k in d.factors}:
            ds = [d for d in mem.live.values() if name in d.factors]
            want = base[name] + torch.cat([d.factors[name][0] for d in ds], 1) @ torch.cat([d.factors[name][1] for d in ds], 1).T
            assert torch.equal(params[name], want)


def test_a_busy_home_makes_the_second_wait_then_fail_clearly(home, capsys):
    other = FileLock(str(home / ".lock"), thread_local=False)  # as another process holds it (its own handle)
    other.acquire()
    try:
        start = time.monotonic()
        with pytest.raises(RoseMemoryError, match="stayed in use by another process for 0.5 s"):
            ParametricMemory(home, lock_timeout=0.5)
        assert time.monotonic() - start >= 0.5
        assert "is in use by another process; waiting up to 0.5 s" in capsys.readouterr().err
        threading.Timer(1.0, other.release).start()
        with ParametricMemory(home, lock_timeout=30) as mem:  # waits for the release, then opens
            assert "waiting up to 30 s" in capsys.readouterr().err
            assert mem.verify() == []
    finally:
        if other.is_locked:
            other.release()


class SlowMemory:
    """A memory stand-in without a lock of its own: the tool's lock must serialise the calls."""

    def __init__(self):
        self.running = self.most = self.calls = 0

    def write(self, subject, pairs, namespace="default", via="api"):
        self.running += 1
        self.most = max(self.most, self.running)
        time.sleep(0.05)
        self.calls += 1
        self.running -= 1
        return {"edit_id": self.calls, "status": "applied", "subject": subject, "facts": [], "namespace": namespace}


def call(i: int) -> dict:
    return {"type": "tool_call", "id": f"c{i}", "name": "remember_facts",
            "args": {"subject": f"Person {i}", "facts": [{"relation": "works as a", "object": "baker"}]}}


def test_concurrent_async_tool_calls_run_one_at_a_time():
    from rose_memory.agents import RoseMemoryTool

    memory = SlowMemory()
    tool = RoseMemoryTool(memory=memory)

    async def run():
        return await asyncio.gather(*(tool.ainvoke(call(i)) for i in range(8)))

    msgs = asyncio.run(run())
    assert [m.status for m in msgs] == ["success"] * 8
    assert memory.calls == 8 and memory.most == 1


def test_concurrent_async_tool_calls_on_a_real_memory(home):
    from rose_memory.agents import RoseMemoryTool

    with ParametricMemory(home) as mem:
        tool = RoseMemoryTool(memory=mem, namespace="alice")

        async def run():
            return await asyncio.gather(*(tool.ainvoke(call(i)) for i in range(4)))

        msgs = asyncio.run(run())
        assert [m.status for m in msgs] == ["success"] * 4, [m.content for m in msgs]
        rows = mem.edits()
        assert sorted(r["subject"] for r in rows) == [f"Person {i}" for i in range(4)]
        assert {r["status"] for r in rows} == {"applied"} and mem.verify() == []
        mem.use("alice")
        assert list(mem.live) == [r["id"] for r in rows]
