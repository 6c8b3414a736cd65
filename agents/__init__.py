"""LangChain integration: the memory as agent tools, the edited model as a chat model, a chatbot.

    from rose_memory.agents import RoseMemoryTool, RoseForgetTool
    tools = [RoseMemoryTool(memory=memory), RoseForgetTool(memory=memory)]

Imports are lazy so that `import rose_memory.agents` stays light until a name is used.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RoseMemoryTool": ".tool",
    "RoseForgetTool": ".tool",
    "RoseRecallTool": ".tool",
    "RememberArgs": ".tool",
    "ForgetArgs": ".tool",
    "memory_tools": ".tool",
    "RoseChatModel": ".chat_model",
    "FactExtractor": ".extractor",
    "Extraction": ".extractor",
    "Facts": ".extractor",
    "ChatSession": ".chatbot",
    "Turn": ".chatbot",
    "run_terminal": ".chatbot",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
