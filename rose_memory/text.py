"""Whether an answer names an object: the one test the memory, the sleep stage and the chat benchmark share."""

from __future__ import annotations

import re


def mentions(text: str, obj: str) -> bool:
    """Whether `obj` appears in `text` as a whole word (case-insensitive)."""
    return re.search(r"(?<!\w)" + re.escape(obj.strip()) + r"(?!\w)", text, re.IGNORECASE) is not None
