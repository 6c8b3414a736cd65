"""Knowledge editing: one interface, `edit(lm, requests, method=..., config=...) -> Delta`.

Methods: rose, rose-no-iso, rose-no-hier, memit, alphaedit, lora.
"""

from .delta import Delta
from .api import METHODS, edit, warm_up
from .config import EditConfig, config_for
from .targets import TargetCache

__all__ = ["Delta", "EditConfig", "METHODS", "TargetCache", "config_for", "edit", "warm_up"]
