"""rose-memory: parametric memory for LLM agents via RoSE same-subject knowledge edits."""

from .errors import RoseMemoryError
from .facts import EditRequest

__all__ = ["RoseMemoryError", "EditRequest", "ParametricMemory", "WriteRecord"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: importing the memory imports torch, which `rose_memory` alone (and the CLI's ledger commands) need not.
    if name in ("ParametricMemory", "WriteRecord"):
        from . import memory

        return getattr(memory, name)
    raise AttributeError(f"module 'rose_memory' has no attribute {name!r}")
