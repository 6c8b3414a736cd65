"""Knowledge editing: one interface, `edit(lm, requests, method=..., config=...) -> Delta`.

Methods: rose, rose-no-iso, rose-no-hier, memit, alphaedit, lora.
"""

from .delta import Delta
from .api import METHODS, edit

__all__ = ["Delta", "METHODS", "edit"]
