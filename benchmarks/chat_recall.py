"""End-to-end recall of a chat that remembers in the weights.

A scripted conversation: a user states 9 facts about 4 (fictional) people over 5 turns, then
chats about other things until the facts have left the prompt window, then asks about each
fact; and once more in a new session (a new ParametricMemory on the same home, so the facts
come back from the ledger into the weights and the prompt starts empty). Each question is
asked from the same conversation state (the window holds the small talk only), so an earlier
answer cannot carry a fact into the next question's prompt.

Conditions, each on a fresh memory home with the embedded model:
  agent      the local model is its own agent: facts are written only if it calls remember_facts
  extractor  as agent, plus the fact extractor for statements the agent did not save
  remember   the user saves each fact with /remember (gold relations): the wake writes alone
  sleep      as remember, then /sleep (consolidation: the facts distilled into the chat pathway)
  floor      the same conversation with every write refused: what the model answers unaided

Recall = the answer names the fact's object (whole word, case-insensitive).

    python benchmarks/chat_recall.py [--conditions agent,extractor,remember,sleep,floor] [--window 3]
                                     [--threads 1] [--json] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from rose_memory.agents.chatbot import ChatSession
from rose_memory.errors import RoseMemoryError
from rose_memory.memory import ParametricMemory, mentions
from rose_memory.model import load_cached

STATEMENTS = [
    ("My friend Aurelio Brandt lives in Warsaw.", "Aurelio Brandt | lives in the city of = Warsaw"),
    ("Mirela Okafor plays the cello and she was born in Lyon.",
     "Mirela Okafor | plays the instrument = cello | was born in the city of = Lyon"),
    ("Aurelio Brandt works as a nurse. His favorite color is brown.",
     "Aurelio Brandt | works as a = nurse | {}'s favorite color is = brown"),
    ("Kofi Mensah has a dog named Biscuit, and he speaks Portuguese.",
     "Kofi Mensah | has a dog named = Biscuit | speaks the language = Portuguese"),
    ("Ingrid Solberg works as a pilot and lives in Tromso.",
     "Ingrid Solberg | works as a = pilot | lives in the city of = Tromso"),
]
SMALL_TALK = [
    "What is a good way to start the morning?",
    "Can you suggest a name for a houseplant?",
    "What is the capital of Italy?",
    "Thanks, that is helpful.",
]
QUESTIONS = [
    ("Where does Aurelio Brandt live?", "Warsaw"),
    ("What does Aurelio Brandt do for a living?", "nurse"),
    ("What is Aurelio Brandt's favorite color?", "brown"),
    ("What instrument does Mirela Okafor play?", "cello"),
    ("Where was Mirela Okafor born?", "Lyon"),
    ("What is the name of Kofi Mensah's dog?", "Biscuit"),
    ("What language does Kofi Mensah speak?", "Portuguese"),
    ("What is Ingrid Solberg's job?", "pilot"),
    ("Where does Ingrid Solberg live?", "Tromso"),
]
CONDITIONS = ("agent", "extractor", "remember", "sleep", "floor")


class NoWrites:
    """A memory that refuses every write (the floor): everything else is the real memory's."""

    def __init__(self, memory: ParametricMemory):
        self._memory = memory

    def write(self, *args, **kwargs):
        raise RoseMemoryError("writes are disabled in the floor condition")

    def __getattr__(self, name):
        return getattr(self._memory, name)


def ask_all(session: ChatSession, state: list) -> list[dict]:
    out = []
    for question, obj in QUESTIONS:
        session.history = list(state)  # the same window for every question
        t = time.perf_counter()
        reply = session.send(question).reply
        out.append({"question": question, "object": obj, "answer": reply, "hit": mentions(reply, obj),
                    "seconds": round(time.perf_counter() - t, 2)})
    return out


def run_condition(name: str, lm, window: int, log) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"chat-recall-{name}-"))
    started = time.perf_counter()
    memory = ParametricMemory(home, model=lm)
    session = ChatSession(NoWrites(memory) if name == "floor" else memory, window=window,
                          extractor=name == "extractor")
    writes, errors, tool_calls = [], [], 0
    for statement, gold in STATEMENTS:
        turn = session.send(statement)
        tool_calls += sum(len(getattr(m, "tool_calls", []) or []) for m in turn.messages)
        if name in ("remember", "sleep"):
            cmd = session.send("/remember " + gold)
            turn.written += cmd.written
            turn.errors += cmd.errors
            turn.source = turn.source or cmd.source
        log(f"[{name}] {statement!r} -> {turn.reply[:80]!r} wrote {[describe(w) for w in turn.written]} {turn.errors}")
        writes += [{"statement": statement, "source": turn.source, **describe_full(w)} for w in turn.written]
        errors += turn.errors
    if name == "sleep":
        t = time.perf_counter()
        turn = session.send("/sleep")
        log(f"[{name}] /sleep ({time.perf_counter() - t:.0f} s): {turn.reply} {turn.errors}")
    for line in SMALL_TALK:  # a write here (the extractor mistaking small talk for facts) is counted too
        turn = session.send(line)
        if turn.written:
            log(f"[{name}] small talk {line!r} wrote {[describe(w) for w in turn.written]}")
        writes += [{"statement": line, "source": turn.source, **describe_full(w)} for w in turn.written]
        errors += turn.errors
    state = list(session.history)
    assert not any(s in m.content for m in session.window_messages() for s, _ in STATEMENTS)
    after_window = ask_all(session, state)
    log(f"[{name}] after the window: {sum(a['hit'] for a in after_window)}/{len(after_window)}")
    memory.close()

    memory = ParametricMemory(home, model=lm)  # a new session: the ledger's edits back in the weights
    try:
        fresh = ChatSession(NoWrites(memory) if name == "floor" else memory, window=window, extractor=False)
        new_session = ask_all(fresh, [])
        plain = []
        for question, obj in QUESTIONS:
            answer = memory.ask(question)
            plain.append({"question": question, "object": obj, "answer": answer, "hit": mentions(answer, obj)})
    finally:
        memory.close()
    log(f"[{name}] new session: {sum(a['hit'] for a in new_session)}/{len(new_session)}; "
        f"memory.ask: {sum(a['hit'] for a in plain)}/{len(plain)}")
    return {
        "condition": name,
        "facts_written": sum(len(w["facts"]) for w in writes if w["status"] == "applied"),
        "writes": writes,
        "tool_calls_by_agent": tool_calls,
        "errors": errors,
        "recall_after_window": sum(a["hit"] for a in after_window) / len(QUESTIONS),
        "recall_new_session": sum(a["hit"] for a in new_session) / len(QUESTIONS),
        "recall_plain_ask": sum(a["hit"] for a in plain) / len(QUESTIONS),
        "after_window": after_window,
        "new_session": new_session,
        "plain_ask": plain,
        "seconds": round(time.perf_counter() - started, 1),
    }


def describe(w: dict) -> str:
    return "; ".join(f"{f['prompt'].format(w['subject'])} {f['object']}" for f in w.get("facts", []))


def describe_full(w: dict) -> dict:
    return {"edit_id": w.get("edit_id"), "status": w.get("status"), "subject": w.get("subject"),
            "facts": [f"{f['prompt'].format(w['subject'])} {f['object']}" for f in w.get("facts", [])],
            "recall": {k: w.get("recall", {}).get(k) for k in ("edit", "chat", "about")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the full results as JSON")
    p.add_argument("--out", type=Path, help="also write the full results to this JSON file")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = set(names) - set(CONDITIONS)
    if unknown:
        p.error(f"unknown conditions {sorted(unknown)}; choose from {', '.join(CONDITIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = load_cached()
    log = (lambda s: print(s, file=sys.stderr, flush=True))
    results = [run_condition(n, lm, args.window, log) for n in names]
    summary = {
        "model": lm.name, "window": args.window, "facts": len(QUESTIONS), "threads": torch.get_num_threads(),
        "rows": [{k: r[k] for k in ("condition", "facts_written", "tool_calls_by_agent", "recall_after_window",
                                    "recall_new_session", "recall_plain_ask", "seconds")} for r in results],
    }
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=2))
    if args.json:
        print(json.dumps({"summary": summary, "results": results}, indent=2))
    else:
        print(f"{'condition':<10} {'written':>7} {'agent calls':>11} {'after window':>12} {'new session':>11} "
              f"{'memory.ask':>10} {'seconds':>8}")
        for r in summary["rows"]:
            print(f"{r['condition']:<10} {r['facts_written']:>7} {r['tool_calls_by_agent']:>11} "
                  f"{r['recall_after_window']:>12.2f} {r['recall_new_session']:>11.2f} "
                  f"{r['recall_plain_ask']:>10.2f} {r['seconds']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
