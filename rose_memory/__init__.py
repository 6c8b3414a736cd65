"""rose-memory: parametric memory for LLM agents via RoSE same-subject knowledge edits."""

from .errors import RoseMemoryError
from .facts import EditRequest

__all__ = ["RoseMemoryError", "EditRequest"]
__version__ = "0.1.0"
