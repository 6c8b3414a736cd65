"""LangChain tools over a `ParametricMemory`: remember facts in the weights, forget them, ask the model.

>>> memory = ParametricMemory(home="~/.rose")
>>> tools = memory_tools(memory, namespace="alice")   # RoseMemoryTool(memory=memory, namespace="alice"), ...
>>> agent = create_agent(model, tools)        # any LangChain / LangGraph agent

The namespace (whose set of edits the tools read and change) is fixed when the tools are
built, by the program that knows which user it serves; it is not an argument the model fills
in, so an agent cannot write into or forget from another user's namespace.

Several facts about one subject go in one call and become one same-subject edit. The tool
answers the model with a short sentence and, as the artifact (`response_format=
"content_and_artifact"`), the edit record with its verification. Bad arguments and refused
writes come back as a tool error message (`ToolMessage(status="error")`), never as an
exception in the agent loop. Calls on one memory are serialised by a lock (the memory's own,
or one per memory object for memories without it), so concurrent async tool calls run one at a
time; `_arun` waits for it in a worker thread so the event loop is not blocked.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rose_memory.errors import RoseMemoryError


class FactArg(BaseModel):
    """One fact about the subject: a relation phrase and its object."""

    relation: str = Field(
        description=(
            "The relation as the words that come between the subject and the object, e.g. "
            "'lives in the city of', 'works as a', 'has a pet named'. Write '{} ' where the subject "
            "goes if it is not at the start, e.g. \"{}'s favorite color is\". Do not repeat the subject's name."
        )
    )
    object: str = Field(description="What completes the relation: a short name or phrase, e.g. 'Warsaw', 'nurse'.")

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, value: Any) -> Any:
        # Small models write a fact as ["lives in", "Warsaw"] or {"lives in": "Warsaw"}.
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return {"relation": value[0], "object": value[1]}
        if isinstance(value, dict) and len(value) == 1 and not {"relation", "object"} & set(value):
            (rel, obj), = value.items()
            return {"relation": rel, "object": obj}
        return value


class RememberArgs(BaseModel):
    """Arguments of `remember_facts`."""

    subject: str = Field(
        description="Who or what the facts are about, spelled exactly as the user wrote it, e.g. 'Aurelio Brandt'."
    )
    facts: list[FactArg] = Field(
        min_length=1,
        description="Every fact the user stated about this subject, all in this one call.",
    )

    @field_validator("facts", mode="before")
    @classmethod
    def _one_fact(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class ForgetArgs(BaseModel):
    """Arguments of `forget_memory`: an edit id, or a subject whose memories all go."""

    model_config = ConfigDict(extra="ignore")

    edit_id: int | None = Field(default=None, description="The id of the memory to forget, as remember_facts reported it.")
    subject: str | None = Field(default=None, description="Forget every memory about this subject instead.")

    @model_validator(mode="after")
    def _one_of(self) -> "ForgetArgs":
        if self.edit_id is None and not (self.subject or "").strip():
            raise ValueError("give edit_id or subject")
        return self


class RecallArgs(BaseModel):
    question: str = Field(description="A question about something the user told you earlier, e.g. 'Where does Aurelio live?'.")


def validation_message(err: ValidationError | Exception) -> str:
    """A validation error in words a model can act on."""
    if not isinstance(err, ValidationError):
        return f"Invalid arguments: {err}"
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ())) or "arguments"
        parts.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "Invalid arguments: " + "; ".join(parts) + ". Nothing was done; fix them and call again."


_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_BY_ID: dict[int, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def memory_lock(memory: Any) -> threading.RLock:
    """The lock that serialises tool calls on `memory`: its own `lock` (which the memory also holds
    around every write, answer and switch), else one made for this memory object."""
    lock = getattr(memory, "lock", None)
    if lock is not None:
        return lock
    with _LOCKS_GUARD:
        try:
            return _LOCKS.setdefault(memory, threading.RLock())
        except TypeError:  # not weak-referenceable
            return _LOCKS_BY_ID.setdefault(id(memory), threading.RLock())


class _MemoryTool(BaseTool):
    """What the memory tools share: the memory and its namespace, error handling, one call at a time, async off the event loop."""

    memory: Any = Field(exclude=True)
    """A `rose_memory.memory.ParametricMemory`."""
    namespace: str = "default"
    """Whose edits the tool reads and changes; set by the program, never by the model."""
    handle_tool_error: bool = True
    handle_validation_error: Any = validation_message

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        from rose_memory.facts import check_namespace

        try:
            return check_namespace(value)
        except RoseMemoryError as err:
            raise ValueError(str(err)) from None

    def _locked(self):
        return memory_lock(self.memory)

    async def _arun(self, *args: Any, run_manager: AsyncCallbackManagerForToolRun | None = None, **kwargs: Any):
        # A write holds the model for seconds; run it in a thread, where it waits for the lock.
        return await asyncio.to_thread(self._run, *args, **kwargs)


def _fact_text(subject: str, relation: str, obj: str) -> str:
    rel = relation if "{}" in relation else "{} " + relation
    return f"{rel.format(subject)} {obj}"


class RoseMemoryTool(_MemoryTool):
    """Write facts about one subject into the model's own weights (a RoSE same-subject edit)."""

    name: str = "remember_facts"
    description: str = (
        "Save facts the user tells you about a person or thing into your long-term memory, so you "
        "know them later. Use it whenever the user states something worth remembering. Put all facts "
        "about one subject in one call."
    )
    args_schema: type[BaseModel] = RememberArgs
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"

    def _run(
        self,
        subject: str,
        facts: list[FactArg],
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, dict]:
        pairs = [(f.relation, f.object) if isinstance(f, FactArg) else (f["relation"], f["object"]) for f in facts]
        try:
            with self._locked():
                record = self.memory.write(subject, pairs, namespace=self.namespace, via="tool")
        except RoseMemoryError as err:
            raise ToolException(f"Nothing was saved: {err}") from None
        data = record.model_dump() if hasattr(record, "model_dump") else dict(record)
        if data.get("status") != "applied":
            raise ToolException(
                f"The memory about {subject} could not be written and was rolled back: "
                f"{data.get('reason') or 'verification failed'}."
            )
        said = "; ".join(_fact_text(subject, r, o) for r, o in pairs)
        if data.get("reason"):  # applied with a note, e.g. "already remembered by edit 3"
            return f"{data['reason'].capitalize()}: {said}.", data
        content = f"Remembered (memory {data['edit_id']}): {said}."
        if data.get("superseded"):
            content += f" It replaces memories {', '.join(map(str, data['superseded']))}."
        return content, data


class RoseForgetTool(_MemoryTool):
    """Undo memories exactly: one edit by id, or every edit about a subject."""

    name: str = "forget_memory"
    description: str = (
        "Forget something you were told: pass the memory's edit_id, or a subject to forget everything "
        "about it. Use it when the user asks you to forget or says a saved fact was wrong."
    )
    args_schema: type[BaseModel] = ForgetArgs
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"

    def _run(
        self,
        edit_id: int | None = None,
        subject: str | None = None,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> tuple[str, list[int]]:
        try:
            with self._locked():
                if edit_id is not None:
                    removed = self.memory.forget(edit_id, namespace=self.namespace)
                else:
                    removed = self.memory.forget(subject=subject, namespace=self.namespace)
        except RoseMemoryError as err:
            raise ToolException(f"Nothing was forgotten: {err}") from None
        if not removed:
            what = f"memory {edit_id}" if edit_id is not None else f"memories about {subject}"
            raise ToolException(f"There are no {what} to forget.")
        return f"Forgot memories {', '.join(map(str, removed))}.", list(removed)


class RoseRecallTool(_MemoryTool):
    """Ask the edited local model: for agents whose own model is not the one that remembers."""

    name: str = "recall_memory"
    description: str = (
        "Ask your long-term memory a question about something the user told you before "
        "(people, places, preferences). Returns the memory's answer."
    )
    args_schema: type[BaseModel] = RecallArgs
    response_format: Literal["content", "content_and_artifact"] = "content"

    def _run(self, question: str, run_manager: CallbackManagerForToolRun | None = None) -> str:
        try:
            with self._locked():
                return self.memory.ask(question, namespace=self.namespace)
        except RoseMemoryError as err:
            raise ToolException(str(err)) from None


def memory_tools(memory, recall: bool = False, namespace: str = "default") -> list[BaseTool]:
    """The tools to give an agent, on `namespace`: remember and forget, plus recall when the agent's model is not the local one."""
    tools: list[BaseTool] = [RoseMemoryTool(memory=memory, namespace=namespace),
                             RoseForgetTool(memory=memory, namespace=namespace)]
    if recall:
        tools.append(RoseRecallTool(memory=memory, namespace=namespace))
    return tools
