"""The LangChain integration on the real embedded model and a real ParametricMemory.

One real write is made per module (through a standard agent loop driven by a scripted fake
chat model emitting a real tool call); the other tests read it, run the tools' error paths
(which write nothing), or need no model at all.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from rose_memory.agents import ChatSession, RoseChatModel, RoseForgetTool, RoseMemoryTool
from rose_memory.agents.chat_model import parse_tool_calls, to_chat_dicts
from rose_memory.agents.chatbot import parse_remember
from rose_memory.agents.extractor import Extraction, FactExtractor, ground, looks_like_statement, split_fact
from rose_memory.memory import ParametricMemory
from rose_memory.model import load_cached

SUBJECT = "Aurelio Brandt"
FACTS = [{"relation": "lives in the city of", "object": "Warsaw"}, {"relation": "works as a", "object": "nurse"}]


class ScriptedChatModel(GenericFakeChatModel):
    """GenericFakeChatModel that accepts bind_tools and records the prompts it was given."""

    seen: list = Field(default_factory=list)

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def call(name: str, args: dict, id: str = "call_1") -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": id}])


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return load_cached()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("rose-home")


@pytest.fixture(scope="module")
def memory(lm, home):
    mem = ParametricMemory(home, model=lm)
    yield mem
    mem.close()


@pytest.fixture(scope="module")
def written(memory):
    """The module's one real write: an agent loop whose model emits a remember_facts call.

    Run with ainvoke while a ticker runs on the event loop: the ticker must keep ticking
    during the write (the tool's _arun must not block the loop).
    """
    model = ScriptedChatModel(messages=iter([call("remember_facts", {"subject": SUBJECT, "facts": FACTS}),
                                             AIMessage("Saved.")]))
    agent = create_agent(model, [RoseMemoryTool(memory=memory), RoseForgetTool(memory=memory)])

    async def run():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.05)

        task = asyncio.create_task(ticker())
        start = time.perf_counter()
        out = await agent.ainvoke({"messages": [HumanMessage("Aurelio Brandt lives in Warsaw, he is a nurse.")]})
        seconds = time.perf_counter() - start
        done.set()
        await task
        return out, ticks, seconds

    out, ticks, seconds = asyncio.run(run())
    return {"messages": out["messages"], "ticks": ticks, "seconds": seconds}


# -- the tool's schema, as a provider receives it (no model needed) ------------------------------


def test_tool_schema_is_an_openai_function(memory):
    spec = convert_to_openai_tool(RoseMemoryTool(memory=memory))
    assert spec["type"] == "function"
    fn = spec["function"]
    assert fn["name"] == "remember_facts" and "memory" in fn["description"]
    params = fn["parameters"]
    assert params["type"] == "object"
    assert set(params["required"]) == {"subject", "facts"}
    facts = params["properties"]["facts"]
    assert facts["type"] == "array" and facts["minItems"] == 1
    assert set(facts["items"]["required"]) == {"relation", "object"}
    for prop in (params["properties"]["subject"], facts["items"]["properties"]["relation"],
                 facts["items"]["properties"]["object"]):
        assert len(prop["description"]) > 20  # tells a model how to fill it
    assert set(params["properties"]) == {"subject", "facts"}  # the namespace is the program's, not the model's
    forget = convert_to_openai_tool(RoseForgetTool(memory=memory))["function"]
    assert forget["name"] == "forget_memory"
    assert set(forget["parameters"]["properties"]) == {"edit_id", "subject"}


# -- the real write through an agent loop --------------------------------------------------------


def test_agent_tool_call_makes_a_real_edit(written, memory):
    tool_msgs = [m for m in written["messages"] if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 1 and tool_msgs[0].status == "success"
    artifact = tool_msgs[0].artifact
    assert artifact["status"] == "applied" and artifact["subject"] == SUBJECT
    assert {f["object"] for f in artifact["facts"]} == {"Warsaw", "nurse"}
    assert "recall" in artifact and artifact["recall"]["edit"] >= 0.5
    assert f"memory {artifact['edit_id']}" in tool_msgs[0].content
    assert written["messages"][-1].content == "Saved."
    assert [r["id"] for r in memory.edits(status="applied")] == [artifact["edit_id"]]


def test_write_did_not_block_the_event_loop(written):
    # The ticker ticks every 50 ms; a blocked loop would have ticked about once in the whole write.
    assert written["seconds"] > 1
    assert written["ticks"] >= max(10, written["seconds"] / 0.05 * 0.2)


def test_the_live_chat_model_answers_from_the_edit(written, memory):
    chat = RoseChatModel.from_memory(memory, max_new_tokens=40)
    answer = chat.invoke([HumanMessage(f"Where does {SUBJECT} live?")]).content
    assert "Warsaw" in answer, answer


def test_writes_are_serialised_and_arun_waits_off_the_loop(written, memory):
    tool = RoseMemoryTool(memory=memory)
    args = {"type": "tool_call", "id": "c9", "name": "remember_facts",
            "args": {"subject": SUBJECT, "facts": FACTS[:1]}}

    async def run():
        with memory.lock:  # another writer holds the model
            task = asyncio.create_task(tool.ainvoke(args))
            await asyncio.sleep(0.3)  # returns: the loop is free while the tool waits
            assert not task.done()
        return await task

    msg = asyncio.run(run())
    assert msg.status == "success" and "already remembered" in msg.content.lower()


# -- errors come back as tool messages, and nothing is written -----------------------------------


@pytest.mark.parametrize(
    "args, expect",
    [
        ({"subject": SUBJECT, "facts": []}, "facts"),
        ({"facts": FACTS}, "subject"),
        ({"subject": SUBJECT, "facts": [{"relation": "lives in", "object": "   "}]}, "object is empty"),
        ({"subject": SUBJECT, "facts": [{"relation": "{} and {} met in", "object": "Rome"}]}, "more than once"),
        ({"subject": "x" * 5000, "facts": FACTS}, "characters"),
    ],
)
def test_bad_arguments_come_back_as_a_tool_message(written, memory, args, expect):
    before = len(memory.edits())
    model = ScriptedChatModel(messages=iter([call("remember_facts", args), AIMessage("Sorry.")]))
    agent = create_agent(model, [RoseMemoryTool(memory=memory)])
    out = agent.invoke({"messages": [HumanMessage("remember this")]})
    tool_msg = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert tool_msg.status == "error"
    assert expect in tool_msg.content, tool_msg.content
    assert out["messages"][-1].content == "Sorry."  # the loop went on
    # the model saw the error and can correct itself
    assert any(isinstance(m, ToolMessage) and m.status == "error" for m in model.seen[-1])
    assert len(memory.edits()) == before


def test_forget_tool_errors_are_tool_messages(written, memory):
    tool = RoseForgetTool(memory=memory)
    for args, expect in [({}, "edit_id or subject"), ({"edit_id": 999}, "Nothing was forgotten"),
                         ({"subject": "Nobody Known"}, "Nothing was forgotten")]:
        msg = tool.invoke({"type": "tool_call", "id": "f1", "name": "forget_memory", "args": args})
        assert msg.status == "error" and expect in msg.content, msg.content


# -- the chat session ----------------------------------------------------------------------------


def test_only_the_window_reaches_the_prompt(written, memory):
    replies = [AIMessage(f"reply {i}") for i in range(5)]
    model = ScriptedChatModel(messages=iter(replies))
    session = ChatSession(memory, model=model, window=2, extractor=False)
    for i in range(5):
        session.send(f"message {i}")
    last_prompt = model.seen[-1]
    said = [m.content for m in last_prompt if isinstance(m, (HumanMessage, AIMessage))]
    assert said == ["message 2", "reply 2", "message 3", "reply 3", "message 4"]
    assert isinstance(last_prompt[0], SystemMessage) and "recall_memory" in last_prompt[0].content
    assert len(session.history) == 10


def test_a_restarted_session_recalls_from_the_weights(written, memory, lm, home):
    memory.close()  # end the first session; the ledger holds the edit
    with ChatSession.open(home, memory_model=lm, window=2) as session:
        assert session.history == []
        turn = session.send(f"Where does {SUBJECT} live?")
    assert "Warsaw" in turn.reply, turn.reply
    assert not turn.written  # a question is not mistaken for facts


# -- pieces that need no model -------------------------------------------------------------------


def test_parse_tool_calls():
    content, calls, bad = parse_tool_calls(
        'Sure. <tool_call>[{"name": "remember_facts", "arguments": {"subject": "A", "facts": []}}]</tool_call>',
        ["remember_facts"])
    assert content == "Sure." and calls[0]["name"] == "remember_facts" and calls[0]["args"]["subject"] == "A"
    assert not bad
    _, calls, _ = parse_tool_calls('{"name": "forget_memory", "parameters": {"edit_id": 3}}', ["forget_memory"])
    assert calls[0]["args"] == {"edit_id": 3}
    _, calls, bad = parse_tool_calls("<tool_call>[{\"name\": \"x\", \"arguments\": {oops</tool_call>", ["x"])
    assert not calls and bad and "JSON" in bad[0]["error"]
    content, calls, _ = parse_tool_calls("Warsaw.", ["remember_facts"])
    assert content == "Warsaw." and not calls


def test_tool_turns_render_for_a_template_without_tools():
    tool = {"type": "function", "function": {"name": "remember_facts", "description": "d", "parameters": {}}}
    msgs = [SystemMessage("Be brief."), HumanMessage("hi"), call("remember_facts", {"subject": "A"}),
            ToolMessage("Remembered.", tool_call_id="call_1", name="remember_facts")]
    dicts = to_chat_dicts(msgs, [tool], native_tools=False)
    assert dicts[0]["role"] == "system" and "<tools>" in dicts[0]["content"] and "Be brief." in dicts[0]["content"]
    assert "<tool_call>" in dicts[2]["content"] and '"subject": "A"' in dicts[2]["content"]
    assert dicts[3]["role"] == "user" and "<tool_response>" in dicts[3]["content"]


def test_extractor_grounding_and_split():
    text = "Yesterday I met Chen Jing; she is a dentist in Toronto and her favorite color is teal."
    got = ground(Extraction(subject="Yesterday I met Chen Jing",
                            facts=["is a dentist in Toronto", "is a Polish nurse", "favorite color is teal"]), text)
    assert got.subject == "Chen Jing"
    assert got.pairs == [("is a dentist in", "Toronto"), ("{}'s favorite color is", "teal")]  # "her favorite ..."
    assert ground(Extraction(subject="Nobody", facts=["is a dentist"]), text).empty
    assert ground(Extraction(subject="Hi", facts=["just moved to a new flat"]), "Hi! I just moved to a new flat.").empty
    assert ground(Extraction(subject="Thanks", facts=["is helpful"]), "Thanks, that is helpful.").empty
    assert ground(Extraction(subject="chen jing", facts=["is a dentist"]), text.lower()).empty  # not a name
    assert split_fact("has a dog named Biscuit") == ("has a dog named", "Biscuit")
    assert split_fact("favorite food is ice cream") == ("favorite food is", "ice cream")
    assert ground(Extraction(subject="Mira Holt", facts=["favorite color is teal"]),
                  "Mira Holt's favorite color is teal.").pairs == [("{}'s favorite color is", "teal")]
    assert not looks_like_statement("Where does Chen Jing work?")
    assert not looks_like_statement("Tell me about Chen Jing")
    assert looks_like_statement("Chen Jing works in Toronto.")
    assert parse_remember("Chen Jing | works in the city of = Toronto | plays the = cello") == (
        "Chen Jing", [("works in the city of", "Toronto"), ("plays the", "cello")])
    assert parse_remember("Chen Jing works in Toronto") is None


def test_extractor_on_the_real_model(lm):
    facts = FactExtractor(RoseChatModel(lm=lm)).extract("Kofi Mensah has a dog named Biscuit.")
    assert facts.subject == "Kofi Mensah"
    assert ("has a dog named", "Biscuit") in facts.pairs


def test_chat_command_is_registered():
    from rose_memory.cli import build_parser

    args = build_parser().parse_args(["chat", "--home", "/tmp/h", "--window", "2", "--no-extractor"])
    assert args.command == "chat" and args.window == 2 and args.no_extractor and callable(args.func)
