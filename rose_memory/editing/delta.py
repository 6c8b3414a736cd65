"""A weight edit as low-rank factors per layer: dW = U @ V.T, applied and reverted exactly."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import RoseMemoryError


@dataclass
class Delta:
    """Low-rank factors per weight name. `factors[name] = (U [d_out, r], V [d_in, r])`.

    Weight names are parameter names of the model (e.g. "model.layers.5.mlp.down_proj.weight"),
    always in the nn.Linear orientation [d_out, d_in]; `arch` handles Conv1D (gpt2) transposes.
    Factors are float32 on the CPU, so revert can subtract exactly what apply added.
    """

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    method: str = ""
    meta: dict = field(default_factory=dict)
    # AlphaEdit: the edit's keys per edited layer index, [n_requests, d_in], kept so that a
    # memory can keep later edits off them (AlphaEdit's preserved K K^T of past edits).
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    # Per applied weight: None (float32 weight: revert subtracts U V^T again, exact to ~1e-7),
    # or the tensor really added after rounding to a low-precision dtype (bf16/fp16).
    _applied: dict[str, torch.Tensor | None] = field(default_factory=dict, repr=False)

    def matrix(self, name: str) -> torch.Tensor:
        u, v = self.factors[name]
        return u.float() @ v.float().T  # [d_out, d_in]

    @property
    def is_applied(self) -> bool:
        return bool(self._applied)

    def apply(self, model: torch.nn.Module) -> "Delta":
        if self._applied:
            raise RoseMemoryError("this Delta is already applied; revert it before applying it again")
        params = dict(model.named_parameters())
        missing = [n for n in self.factors if n not in params]
        if missing:
            raise RoseMemoryError(f"the model has no parameter {missing[0]!r}; was this Delta made for another model?")
        with torch.no_grad():
            for name in self.factors:
                w = params[name]
                upd = self.matrix(name)
                if upd.shape != w.shape:
                    upd = upd.T  # Conv1D keeps weights as [d_in, d_out]
                if upd.shape != w.shape:
                    raise RoseMemoryError(f"Delta for {name} has shape {tuple(upd.shape)}, weight is {tuple(w.shape)}")
                if w.dtype == torch.float32:
                    w.add_(upd.to(w.device))
                    self._applied[name] = None
                else:
                    before = w.detach().float()
                    w.add_(upd.to(w.device, w.dtype))
                    # What really changed, in float32 (exact for bf16/fp16 values), for revert.
                    self._applied[name] = (w.detach().float() - before).to("cpu")
        return self

    def revert(self, model: torch.nn.Module) -> "Delta":
        if not self._applied:
            raise RoseMemoryError("this Delta is not applied; nothing to revert")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, added in self._applied.items():
                w = params[name]
                if added is None:
                    upd = self.matrix(name)
                    w.sub_((upd if upd.shape == w.shape else upd.T).to(w.device))
                else:
                    w.copy_((w.float() - added.to(w.device)).to(w.dtype))
        self._applied = {}
        return self

    def norm(self) -> float:
        return float(sum(self.matrix(n).norm() ** 2 for n in self.factors) ** 0.5)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: '<name>::U', '<name>::V', and 'keys::<layer>'."""
        out: dict[str, torch.Tensor] = {}
        for name, (u, v) in self.factors.items():
            out[f"{name}::U"] = u.contiguous().float().cpu()
            out[f"{name}::V"] = v.contiguous().float().cpu()
        for layer, k in self.keys.items():
            out[f"keys::{layer}"] = k.contiguous().float().cpu()
        return out

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], method: str = "", meta: dict | None = None) -> "Delta":
        names = sorted({k.rsplit("::", 1)[0] for k in tensors if k.endswith(("::U", "::V"))})
        factors = {n: (tensors[f"{n}::U"].float(), tensors[f"{n}::V"].float()) for n in names}
        keys = {int(k.split("::", 1)[1]): t.float() for k, t in tensors.items() if k.startswith("keys::")}
        return cls(factors=factors, method=method, meta=dict(meta or {}), keys=keys)
