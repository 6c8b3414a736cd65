"""Whether an answer names an object: the one test the memory, the sleep stage and the chat benchmark share."""

from __future__ import annotations

import re


def first_mention(text: str, obj: str) -> re.Match | None:
    """Where `obj` first appears in `text` as a whole word (case-insensitive); None if it does not."""
    return re.search(r"(?<!\w)" + re.escape(obj.strip()) + r"(?!\w)", text, re.IGNORECASE)


def mentions(text: str, obj: str) -> bool:
    """Whether `obj` appears in `text` as a whole word (case-insensitive)."""
    return first_mention(text, obj) is not None
