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


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise RoseMemoryError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def method_config(lm: LoadedModel, method: str, config: EditConfig | dict | None = None) -> EditConfig:
    """The EditConfig a method runs with: the model's preset, the overrides, the ablation's switch."""
    if isinstance(config, EditConfig):
        cfg = config.checked(lm.model.config.num_hidden_layers)
    else:
        cfg = config_for(lm.model, config)
    if method == "rose-no-iso":
        cfg = cfg.model_copy(update={"iso": False})
    elif method == "rose-no-hier":
        cfg = cfg.model_copy(update={"hier": False})
    return cfg


def warm_up(lm: LoadedModel, method: str, config: EditConfig | dict | None = None, progress: bool = False) -> None:
    """Compute once what every write of `method` reuses: the key statistics (cached on disk), RoSE's
    protectors and AlphaEdit's null-space projectors (memoised per process). The eval and the speed
    benchmark call it before timing, so their seconds per write are those of a memory that is up."""
    _check_method(method)
    from . import stats

    cfg = method_config(lm, method, config)
    if method == "lora":
        return
    if method == "alphaedit":
        stats.nullspace_projectors_for(lm, cfg, progress)
    elif method.startswith("rose") and cfg.iso:
        if cfg.iso_protect > 0:
            stats.protectors_for(lm, cfg, progress)
    else:  # memit, rose-no-iso: the covariance solve
        stats.moments_for(lm, cfg, progress)


def edit(lm: LoadedModel, requests, method: str = "rose", config: EditConfig | dict | None = None,
         progress: bool = False, cache: TargetCache | None = None) -> Delta:
    """Compute (not apply) the Delta that writes `requests` into `lm.model`.

    requests: EditRequest objects or dicts {subject, prompt with '{}', target}; several may
    share a subject. The model's weights are the same before and after the call. `cache`
    shares computed target values between methods that use the same ones.
    """
    _check_method(method)
    if not isinstance(lm, LoadedModel):
        raise RoseMemoryError("edit() takes a LoadedModel (rose_memory.model.load_model(...))")
    reqs = make_requests(requests)
    cfg = method_config(lm, method, config)
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
