"""The single entry point of the editing package."""

from __future__ import annotations

import torch

from ..errors import RoseMemoryError
from ..facts import make_requests
from ..model import LoadedModel
from .config import EditConfig, config_for
from .delta import Delta
from .targets import TargetCache

METHODS = ("rose", "rose-no-iso", "rose-no-hier", "memit", "alphaedit", "lora")


def edit(lm: LoadedModel, requests, method: str = "rose", config: EditConfig | dict | None = None,
         progress: bool = False, cache: TargetCache | None = None) -> Delta:
    """Compute (not apply) the Delta that writes `requests` into `lm.model`.

    requests: EditRequest objects or dicts {subject, prompt with '{}', target}; several may
    share a subject. The model's weights are the same before and after the call. `cache`
    shares computed target values between methods that use the same ones.
    """
    if method not in METHODS:
        raise RoseMemoryError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(lm, LoadedModel):
        raise RoseMemoryError("edit() takes a LoadedModel (rose_memory.model.load_model(...))")
    reqs = make_requests(requests)
    if isinstance(config, EditConfig):
        cfg = config.checked(lm.model.config.num_hidden_layers)
    else:
        cfg = config_for(lm.model, config)
    if method == "rose-no-iso":
        cfg = cfg.model_copy(update={"iso": False})
    elif method == "rose-no-hier":
        cfg = cfg.model_copy(update={"hier": False})
    if method.startswith("rose"):
        from .rose import edit_rose as run
    elif method == "memit":
        from .memit import edit_memit as run
    elif method == "alphaedit":
        from .memit import edit_alphaedit as run
    else:
        from .lora import edit_lora as run
    with torch.enable_grad():
        delta = run(lm, reqs, cfg, cache, progress)
    delta.method = method
    delta.meta.update({"requests": [r.model_dump() for r in reqs], "layers": cfg.layers})
    return delta
