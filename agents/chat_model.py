"""The edited model as a LangChain chat model: the very weights the memory writes to, tool calls included.

`RoseChatModel` wraps a live `LoadedModel` (usually `memory.lm`), so a memory write is visible
to the next answer. Tools bound with `bind_tools` are rendered into the prompt: through the
model's chat template when it knows tools (Qwen2.5, Llama 3.1, ...), otherwise in the system
message in the Hermes convention that SmolLM2 was tuned on (`<tools>...</tools>`, answers in
`<tool_call>[{"name": ..., "arguments": {...}}]</tool_call>`). Calls in the output are parsed
into `AIMessage.tool_calls`; a call that cannot be parsed lands in `invalid_tool_calls` with
the error. `tool_choice` ("any", "required", a tool name) is honoured by starting the
assistant's answer with the tool-call opening, so `with_structured_output` works too.
"""

from __future__ import annotations

import json
import re
import uuid
from contextlib import nullcontext
from typing import Any, Sequence

import torch
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

DEFAULT_SYSTEM = "You are a helpful assistant."
TOOLS_PROMPT = (
    "You can call functions. The functions you may call are given in JSON inside <tools></tools>:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call functions, answer with only: "
    '<tool_call>[{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}]</tool_call>\n'
    "If no function fits, answer in plain words."
)
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


def message_text(message: BaseMessage) -> str:
    """The text of a message; content blocks other than text are dropped."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
    return "".join(parts)


def _template_knows_tools(tokenizer) -> bool:
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def _render_call(calls: Sequence[dict]) -> str:
    return CALL_OPEN + json.dumps([{"name": c["name"], "arguments": c["args"]} for c in calls]) + CALL_CLOSE


def to_chat_dicts(messages: Sequence[BaseMessage], tools: list[dict] | None, native_tools: bool) -> list[dict]:
    """LangChain messages as the role/content dicts a chat template takes.

    Without native tool support, tool calls are written back as `<tool_call>` text and tool
    results as user turns in `<tool_response>` tags, and the tool list joins the system message.
    """
    out: list[dict] = []
    system: list[str] = []
    for m in messages:
        text = message_text(m)
        if isinstance(m, SystemMessage):
            system.append(text)
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": text})
        elif isinstance(m, AIMessage):
            if m.tool_calls and native_tools:
                calls = [
                    {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
                    for c in m.tool_calls
                ]
                out.append({"role": "assistant", "content": text, "tool_calls": calls})
            elif m.tool_calls:
                out.append({"role": "assistant", "content": (text + "\n" if text else "") + _render_call(m.tool_calls)})
            else:
                out.append({"role": "assistant", "content": text})
        elif isinstance(m, ToolMessage):
            if native_tools:
                out.append({"role": "tool", "content": text, "name": m.name, "tool_call_id": m.tool_call_id})
            else:
                body = json.dumps({"name": m.name, "content": text}, ensure_ascii=False)
                out.append({"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"})
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": text})
        else:
            raise ValueError(f"cannot render a {type(m).__name__} into the chat template")
    if tools and not native_tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        system.append(TOOLS_PROMPT.format(tools=listing))
        if len(system) == 1:  # only the tool listing: keep a persona line before it
            system.insert(0, DEFAULT_SYSTEM)
    if system:
        out.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return out


_DECODER = json.JSONDecoder()


def _first_json(text: str) -> Any:
    """The first JSON value in `text` (a list or an object), ignoring what follows it."""
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        raise ValueError("no JSON found")
    value, _ = _DECODER.raw_decode(text[min(starts):])
    return value


def parse_tool_calls(text: str, tool_names: Sequence[str]) -> tuple[str, list, list]:
    """Split model output into (content, tool_calls, invalid_tool_calls).

    Accepts `<tool_call>` blocks holding one call or a list of calls, with `arguments` or
    `parameters`, and a bare leading JSON call naming a bound tool (Llama 3.1 style).
    """
    calls, invalid = [], []
    blocks = re.findall(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|$)", text, flags=re.S)
    content = re.sub(re.escape(CALL_OPEN) + r".*?(?:" + re.escape(CALL_CLOSE) + r"|$)", "", text, flags=re.S).strip()
    if not blocks and tool_names and text.lstrip().startswith("{") and '"name"' in text:
        blocks, content = [text], ""
    for raw in blocks:
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        try:
            value = _first_json(raw)
        except ValueError as err:
            invalid.append(invalid_tool_call(name=None, args=raw.strip(), id=call_id, error=f"not valid JSON: {err}"))
            continue
        for item in value if isinstance(value, list) else [value]:
            call_id = call_id if len(calls) == 0 else f"call_{uuid.uuid4().hex[:12]}"
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                invalid.append(invalid_tool_call(name=None, args=json.dumps(item), id=call_id,
                                                 error="a tool call needs a 'name' and 'arguments'"))
                continue
            args = item.get("arguments", item.get("parameters", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    pass
            if not isinstance(args, dict):
                invalid.append(invalid_tool_call(name=item["name"], args=json.dumps(args), id=call_id,
                                                 error="'arguments' must be a JSON object"))
                continue
            calls.append(tool_call(name=item["name"], args=args, id=call_id))
    return content, calls, invalid


class RoseChatModel(BaseChatModel):
    """A chat model over a live local causal LM (by default the one a `ParametricMemory` edits).

    >>> chat = RoseChatModel.from_memory(memory)
    >>> chat.invoke("Where does Aurelio live?").content
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    lm: Any = Field(exclude=True)
    """A `rose_memory.model.LoadedModel`: `.model`, `.tokenizer`, `.name`."""
    lock: Any = Field(default=None, exclude=True)
    """Held while generating so no answer reads half-applied weights: the memory's lock, or (from_memory)
    a hold that also puts one namespace's edits in the weights."""
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 decodes greedily (reproducible); above 0 samples."""
    repetition_penalty: float = 1.0

    @classmethod
    def from_memory(cls, memory, namespace: str = "default", **kwargs: Any) -> "RoseChatModel":
        """The memory's model, answering with `namespace`'s edits in its weights (switched in for each answer)."""
        hold = memory.holding(namespace) if hasattr(memory, "holding") else getattr(memory, "lock", None)
        return cls(lm=memory.lm, lock=hold, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "rose-memory-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": getattr(self.lm, "name", "?"), "temperature": self.temperature,
                "max_new_tokens": self.max_new_tokens}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (BaseTool, pydantic class, function, or OpenAI tool dict).

        tool_choice: None/"auto" (the model decides), "none", "any"/"required"/True (must call
        one), a tool name or {"function": {"name": ...}} (must call that one).
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    # -- generation -------------------------------------------------------------------------

    def _forced_prefix(self, tools: list[dict], tool_choice: Any, native: bool) -> str:
        if tool_choice in (None, "auto", "none", False) or not tools:
            return ""
        name = None
        if isinstance(tool_choice, dict):
            name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
        elif isinstance(tool_choice, str) and tool_choice not in ("any", "required"):
            name = tool_choice
        elif len(tools) == 1:
            name = tools[0]["function"]["name"]
        if native:
            return ""  # the template's own format is unknown here; the prompt asks for a call
        if not name:
            return CALL_OPEN + '[{"name": "'
        prefix = CALL_OPEN + '[{"name": ' + json.dumps(name) + ', "arguments": {'
        tool = next((t for t in tools if t["function"]["name"] == name), None)
        params = (tool or {}).get("function", {}).get("parameters", {})
        first = next(iter(params.get("properties", {})), None)
        if first and first in params.get("required", []):
            # Start the first required argument too: small models otherwise drift into the schema.
            kind = params["properties"][first].get("type")
            prefix += json.dumps(first) + ": " + ('"' if kind == "string" else "")
        return prefix

    def render(self, messages: Sequence[BaseMessage], tools: list[dict] | None = None,
               tool_choice: Any = None) -> tuple[str, str]:
        """(prompt text, forced answer prefix) for these messages and tools."""
        tok = self.lm.tokenizer
        native = bool(tools) and _template_knows_tools(tok)
        if tool_choice == "none":
            tools = None
        dicts = to_chat_dicts(messages, tools, native)
        kwargs = {"tools": [t for t in tools]} if (native and tools) else {}
        prompt = tok.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True, **kwargs)
        prefix = self._forced_prefix(tools or [], tool_choice, native)
        return prompt + prefix, prefix

    def complete(self, prompt: str, stop: Sequence[str] | None = None, max_new_tokens: int | None = None) -> tuple[str, int, int]:
        """Greedy (or sampled) continuation of `prompt`: (text, prompt tokens, new tokens)."""
        tok, model = self.lm.tokenizer, self.lm.model
        device = next(model.parameters()).device
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(device)
        eos = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(i, int) and i >= 0]
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            do_sample=self.temperature > 0,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
            eos_token_id=eos,
            repetition_penalty=self.repetition_penalty,
        )
        if self.temperature > 0:
            gen_kwargs["temperature"] = self.temperature
        else:  # silence "temperature is set but do_sample=False" from the model's generation config
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if stop:
            gen_kwargs.update(stop_strings=list(stop), tokenizer=tok)
        with (self.lock or nullcontext()), torch.no_grad():
            out = model.generate(**enc, **gen_kwargs)
        new = out[0, enc["input_ids"].shape[1]:]
        text = tok.decode(new, skip_special_tokens=True)
        for s in stop or ():
            if s in text:
                text = text[: text.index(s)]
        return text, int(enc["input_ids"].shape[1]), int(new.shape[0])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        tools: list[dict] | None = None,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt, prefix = self.render(messages, tools, tool_choice)
        text, n_in, n_out = self.complete(prompt, stop, kwargs.get("max_new_tokens"))
        text = prefix + text
        if prefix and CALL_CLOSE not in text:
            text += CALL_CLOSE
        names = [t["function"]["name"] for t in tools or []] if tool_choice != "none" else []
        if names:
            content, calls, invalid = parse_tool_calls(text, names)
        else:
            content, calls, invalid = text.strip(), [], []
        message = AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            response_metadata={"model_name": getattr(self.lm, "name", ""), "raw": text},
            usage_metadata={"input_tokens": n_in, "output_tokens": n_out, "total_tokens": n_in + n_out},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
