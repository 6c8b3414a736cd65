"""The single entry point of the editing package."""

from __future__ import annotations

from ..errors import RoseMemoryError
from ..facts import make_requests
from ..model import LoadedModel
from .delta import Delta

METHODS = ("rose", "rose-no-iso", "rose-no-hier", "memit", "alphaedit", "lora")


def edit(lm: LoadedModel, requests, method: str = "rose", config=None, progress: bool = False, cache=None) -> Delta:
    """Compute (not apply) the Delta that writes `requests` into `lm.model`.

    The model's weights are the same before and after the call. `cache` (a TargetCache)
    shares computed target values between methods that use the same ones.
    """
    if method not in METHODS:
        raise RoseMemoryError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    reqs = make_requests(requests)
    raise NotImplementedError(method)
