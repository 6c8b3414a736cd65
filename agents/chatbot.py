"""A long-running chat that remembers in the model's weights, not in its prompt.

`ChatSession` runs a standard agent loop (langchain's `create_agent`) with the memory tools.
Only the last `window` exchanges are put in the prompt; what falls out of the window survives
only as edits in the weights. Three ways a fact gets written:

- the agent calls `remember_facts` itself (reliable with large models, rare with the 135M default);
- the fact extractor: when the agent wrote nothing and the user's message is a statement, the
  local model is asked for structured facts (pydantic-validated, checked against the message);
- the user types `/remember Subject | relation = object | ...` (or `/remember <a sentence>`).

The agent model may be any LangChain chat model with tool calling; memories always go to the
weights of the memory's local model (the agent then also gets `recall_memory` to ask it).
Memories persist across sessions through the memory's ledger.

    with ChatSession.open("~/.rose-memory") as chat:
        chat.send("My friend Aurelio Brandt lives in Warsaw.")
        ...
        chat.send("Where does Aurelio Brandt live?").reply
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, Callable

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.errors import GraphRecursionError

from rose_memory.errors import RoseMemoryError

from .chat_model import RoseChatModel, message_text
from .extractor import FactExtractor, Facts, looks_like_statement
from .tool import RoseMemoryTool, memory_tools

LOCAL_SYSTEM = (
    "You are a helpful assistant with a long-term memory kept in your own weights. When the user "
    "tells you facts about a person or thing, save them with remember_facts, all facts about one "
    "subject in one call. Otherwise answer briefly."
)
REMOTE_SYSTEM = (
    "You are a helpful assistant with a long-term memory. When the user tells you facts about a "
    "person or thing, save them with remember_facts, all facts about one subject in one call. "
    "When asked about people or things the user may have told you about before, call "
    "recall_memory first and answer from it. When asked to forget something, use forget_memory."
)
HELP = """commands:
  /remember Subject | relation = object | relation = object   write these facts
  /remember <a sentence>          extract facts from the sentence and write them
  /forget <edit id> | <subject>   undo memories exactly
  /memories                       list what is remembered
  /sleep [subject]                consolidate: distil written facts into the chat pathway (minutes on a CPU)
  /window [N]                     show or set how many exchanges stay in the prompt
  /help                           this text
  /quit                           leave (memories stay in the home's ledger)"""


@dataclass
class Turn:
    """What one user message led to."""

    user: str
    reply: str
    written: list[dict] = field(default_factory=list)  # write records (the tool's artifacts) applied this turn
    source: str | None = None                          # who wrote them: "agent", "extractor" or "command"
    errors: list[str] = field(default_factory=list)    # tool errors (bad arguments, refused writes)
    messages: list[BaseMessage] = field(default_factory=list)  # what the agent loop added this turn


class _ToolRounds(AgentMiddleware):
    """After `rounds` tool calls in a turn the model must answer in words (small models loop)."""

    def __init__(self, rounds: int):
        super().__init__()
        self.rounds = rounds

    def _limit(self, request: ModelRequest) -> ModelRequest:
        since_user = []
        for m in reversed(request.messages):
            if isinstance(m, HumanMessage):
                break
            since_user.append(m)
        calls = sum(1 for m in since_user if isinstance(m, AIMessage) and m.tool_calls)
        return request.override(tools=[]) if calls >= self.rounds else request

    def wrap_model_call(self, request, handler):
        return handler(self._limit(request))

    async def awrap_model_call(self, request, handler):
        return await handler(self._limit(request))


def parse_remember(arg: str) -> tuple[str, list[tuple[str, str]]] | None:
    """'Subject | relation = object | relation = object' -> (subject, pairs); None if not in that form."""
    parts = [p.strip() for p in arg.split("|")]
    if len(parts) < 2 or not all("=" in p for p in parts[1:]):
        return None
    pairs = [tuple(x.strip() for x in p.split("=", 1)) for p in parts[1:]]
    return parts[0], pairs  # type: ignore[return-value]


def describe_write(record: dict) -> str:
    facts = "; ".join(f"{f['prompt'].format(record['subject'])} {f['object']}" for f in record.get("facts", []))
    recall = record.get("recall") or {}
    shown = ", ".join(f"{k} {recall[k]:.2f}" for k in ("edit", "chat") if isinstance(recall.get(k), (int, float)))
    return f"memory {record['edit_id']}: {facts}" + (f" [recall {shown}]" if shown else "")


class ChatSession:
    """A chat whose long-term memory is the model's weights; see the module docstring."""

    def __init__(
        self,
        memory,
        model: BaseChatModel | None = None,
        *,
        window: int = 3,
        extractor: bool = True,
        extractor_model: BaseChatModel | None = None,
        system_prompt: str | None = None,
        max_tool_rounds: int = 1,
        max_new_tokens: int = 96,
        namespace: str = "default",
    ):
        self.memory = memory
        self.namespace = namespace   # whose edits answer and where writes go (a set of deltas in the memory)
        self.local = RoseChatModel.from_memory(memory, namespace=namespace, max_new_tokens=max_new_tokens)
        remote = model is not None
        self.model = model or self.local
        self.tools = memory_tools(memory, recall=remote, namespace=namespace)
        self._remember = next(t for t in self.tools if isinstance(t, RoseMemoryTool))
        self.agent = create_agent(
            self.model,
            self.tools,
            system_prompt=system_prompt or (REMOTE_SYSTEM if remote else LOCAL_SYSTEM),
            middleware=[_ToolRounds(max_tool_rounds)],
        )
        self.recursion_limit = 3 + 2 * max_tool_rounds
        self.window = window
        self.extractor = FactExtractor(extractor_model or self.local)
        self.auto_extract = extractor  # run the extractor after turns in which nothing was written
        self.history: list[BaseMessage] = []  # the whole conversation: user messages and final replies
        self._owns_memory = False

    @classmethod
    def open(cls, home=None, memory_model=None, *, device: str = "auto", dtype: str = "auto", progress: bool = False,
             **kwargs: Any) -> "ChatSession":
        """Open (or create) the memory at `home` and a session on it; close() closes both.

        memory_model: the local model's name or path, or a LoadedModel (None: the home's model).
        device, dtype and progress are the memory's (progress: loading, writes and sleeps on stderr).
        """
        from rose_memory.memory import ParametricMemory

        memory = ParametricMemory(home, model=memory_model, device=device, dtype=dtype, progress=progress)
        try:
            session = cls(memory, **kwargs)
        except BaseException:
            memory.close()
            raise
        session._owns_memory = True
        return session

    def close(self) -> None:
        if self._owns_memory:
            self.memory.close()

    def __enter__(self) -> "ChatSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the prompt window -----------------------------------------------------------------------

    def window_messages(self) -> list[BaseMessage]:
        return self.history[-2 * self.window:] if self.window > 0 else []

    # -- turns -----------------------------------------------------------------------------------

    def send(self, text: str) -> Turn:
        """One user message: a /command, or an agent turn (plus the extractor when nothing was written)."""
        text = text.strip()
        if not text:
            return Turn(user=text, reply="", errors=["empty message"])
        if text.startswith("/"):
            return self.command(text)
        past = self.window_messages()
        try:
            out = self.agent.invoke({"messages": [*past, HumanMessage(text)]},
                                    {"recursion_limit": self.recursion_limit})
            new = out["messages"][len(past) + 1:]
        except GraphRecursionError:
            new = [AIMessage("(I got stuck calling tools; please rephrase.)")]
        return self._finish(text, new)

    async def asend(self, text: str) -> Turn:
        """`send` for asyncio programs: model calls and writes run off the event loop."""
        text = text.strip()
        if not text:
            return Turn(user=text, reply="", errors=["empty message"])
        if text.startswith("/"):
            return await asyncio.to_thread(self.command, text)
        past = self.window_messages()
        try:
            out = await self.agent.ainvoke({"messages": [*past, HumanMessage(text)]},
                                           {"recursion_limit": self.recursion_limit})
            new = out["messages"][len(past) + 1:]
        except GraphRecursionError:
            new = [AIMessage("(I got stuck calling tools; please rephrase.)")]
        return await asyncio.to_thread(self._finish, text, new)

    def _finish(self, text: str, new: list[BaseMessage]) -> Turn:
        turn = Turn(user=text, reply="", messages=list(new))
        for m in new:
            if isinstance(m, ToolMessage) and m.name == self._remember.name:
                if m.status == "error":
                    turn.errors.append(message_text(m))
                elif isinstance(m.artifact, dict):
                    turn.written.append(m.artifact)
                    turn.source = "agent"
            elif isinstance(m, ToolMessage) and m.status == "error":
                turn.errors.append(message_text(m))
        finals = [m for m in new if isinstance(m, AIMessage) and not m.tool_calls]
        turn.reply = message_text(finals[-1]).strip() if finals else ""
        if not turn.written and self.auto_extract and looks_like_statement(text):
            self._extract_and_write(text, turn)
        self.history += [HumanMessage(text), AIMessage(turn.reply)]
        return turn

    def _extract_and_write(self, text: str, turn: Turn, source: str = "extractor") -> Facts:
        facts = self.extractor.extract(text)
        if not facts.empty:
            self._write(facts.subject, facts.pairs, source, turn)
        return facts

    def _write(self, subject: str, pairs: list[tuple[str, str]], source: str, turn: Turn) -> None:
        call = {"type": "tool_call", "id": f"{source}_{len(self.history)}", "name": self._remember.name,
                "args": {"subject": subject, "facts": [{"relation": r, "object": o} for r, o in pairs]}}
        msg = self._remember.invoke(call)
        if msg.status == "error":
            turn.errors.append(message_text(msg))
        else:
            turn.written.append(msg.artifact)
            turn.source = source

    # -- commands --------------------------------------------------------------------------------

    def command(self, text: str) -> Turn:
        name, _, arg = text.partition(" ")
        name, arg = name.lower(), arg.strip()
        turn = Turn(user=text, reply="")
        if name == "/remember":
            parsed = parse_remember(arg)
            if parsed:
                self._write(parsed[0], parsed[1], "command", turn)
            elif arg:
                if self._extract_and_write(arg, turn, "command").empty:
                    turn.errors.append("no facts found in that sentence; write /remember Subject | relation = object")
            else:
                turn.errors.append("usage: /remember Subject | relation = object | relation = object")
            turn.reply = "Remembered." if turn.written else ""
        elif name == "/forget":
            try:
                ids = (self.memory.forget(int(arg), namespace=self.namespace) if arg.isdigit()
                       else self.memory.forget(subject=arg, namespace=self.namespace))
                turn.reply = f"Forgot memories {', '.join(map(str, ids))}."
            except RoseMemoryError as err:
                turn.errors.append(str(err))
        elif name == "/sleep":
            try:
                records = self.memory.consolidate(subject=arg or None, namespace=self.namespace)
                turn.reply = "\n".join(describe_sleep(r) for r in records) or "Nothing new to consolidate."
            except RoseMemoryError as err:
                turn.errors.append(str(err))
        elif name == "/memories":
            rows = self.memory.edits(status="applied", namespace=self.namespace)
            turn.reply = "\n".join(
                describe_write({"edit_id": r["id"], "subject": r["subject"], "facts": r["facts"]}) for r in rows
            ) or "Nothing remembered yet."
        elif name == "/window":
            if arg:
                if not arg.isdigit():
                    turn.errors.append("usage: /window N (N >= 0 exchanges)")
                else:
                    self.window = int(arg)
            turn.reply = f"The prompt keeps the last {self.window} exchanges."
        elif name == "/help":
            turn.reply = HELP
        else:
            turn.errors.append(f"unknown command {name}; /help lists them")
        return turn


def describe_sleep(rec) -> str:
    """One line per sleep: which facts the sleep delta now carries and which stay on their wake edit."""
    done = [f"{f['prompt'].replace('{}', rec.subject)} {f['object']}" for f in rec.facts if f["stage"] == "consolidated"]
    awake = [f"{f['prompt'].replace('{}', rec.subject)} {f['object']}" for f in rec.facts if f["stage"] != "consolidated"]
    head = f"Slept on {rec.subject} (edit {rec.edit_id}, {rec.status}, {rec.seconds:.0f} s)"
    parts = [head] + ([f"consolidated: {'; '.join(done)}"] if done else []) + ([f"still awake: {'; '.join(awake)}"] if awake else [])
    if rec.reason:
        parts.append(rec.reason)
    return ". ".join(parts) + "."


def _messages(read: Callable[[str], str], echo: Callable[[str], None] | None = None,
              on_eof: Callable[[], None] | None = None) -> Iterator[str]:
    """The lines a chat loop answers: read until /quit, /exit or EOF (then `on_eof`), empty ones
    skipped; `echo` gets every line read, as typed."""
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            if on_eof is not None:
                on_eof()
            return
        if echo is not None:
            echo(f"you> {line}")
        if not line.strip():
            continue
        if line.strip().lower() in ("/quit", "/exit"):
            return
        yield line


def run_terminal(session: ChatSession, read: Callable[[str], str] = input, write: Callable[[str], None] = print,
                 echo: bool = False) -> None:
    """The interactive loop: read a line, answer, show what was written to memory. /quit or EOF ends it."""
    write(f"rose-memory chat ({getattr(session.memory.lm, 'name', 'model')}; the prompt keeps the last "
          f"{session.window} exchanges, older ones live only in the weights). /help for commands.")
    for line in _messages(read, echo=write if echo else None, on_eof=lambda: write("")):
        try:
            turn = session.send(line)
        except RoseMemoryError as err:
            write(f"  ! {err}")
            continue
        if turn.reply:
            write("bot> " + turn.reply)
        for record in turn.written:
            write(f"  + remembered ({turn.source}) {describe_write(record)}")
        for err in turn.errors:
            write(f"  ! {err}")


def turn_json(turn: Turn) -> str:
    """One turn as one JSON line: the user's message, the answer, the memory writes and any errors."""
    return json.dumps({"question": turn.user, "answer": turn.reply, "written": turn.written, "source": turn.source,
                       "errors": turn.errors}, ensure_ascii=False, default=str)


def run_json_lines(session: ChatSession, read: Callable[[str], str], write: Callable[[str], None] = print) -> None:
    """The loop of `rose-memory chat --json`: each message read gives one JSON line (turn_json) on `write`,
    nothing else; empty lines are skipped, /quit or EOF ends it."""
    for line in _messages(read):
        try:
            turn = session.send(line)
        except RoseMemoryError as err:
            turn = Turn(user=line.strip(), reply="", errors=[str(err)])
        write(turn_json(turn))
