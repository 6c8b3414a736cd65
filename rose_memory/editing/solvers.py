"""The three closed-form solves. Each returns low-rank factors (U [d_out, n], V [d_in, n]), dW = U V^T.

keys: [d_in, n] (one column per key), resid: [d_out, n] (the change wanted at each key).
All in float64 on the CPU, as MEMIT does, then returned as float32.
"""

from __future__ import annotations

import torch


def isotropic(keys: torch.Tensor, resid: torch.Tensor, lam: float,
              protect: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RoSE's Isotropic Geometric Alignment: the minimum-norm dW with dW K ~= R (C -> lam I).

    dW = R (K^T P K + lam' I)^-1 K^T P, lam' = lam * mean squared (projected) key norm. P projects
    out the few directions every token's key shares (`protect_projector`); without it, P = I.
    """
    k, r = keys.double(), resid.double()
    pk = k if protect is None else protect.double() @ k          # [d_in, n]
    gram = k.T @ pk
    ridge = lam * gram.diagonal().mean()
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    v = pk @ torch.linalg.solve(gram + ridge * eye, eye)
    return r.float(), v.float()


def protect_projector(cov: torch.Tensor, energy: float) -> torch.Tensor:
    """I - U U^T over the top eigenvectors of C carrying `energy` of its trace: [d_in, d_in].

    Generic text's keys share a few dominant directions (their mean above all); an isotropic
    update that uses them fires on every token. Projecting them out keeps the solve isotropic
    in the rest of the key space.
    """
    evals, evecs = torch.linalg.eigh(cov.double())
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    r = int((evals.cumsum(0) / evals.sum() < energy).sum()) + 1
    top = evecs[:, :r]
    return (torch.eye(cov.shape[0], dtype=torch.float64) - top @ top.T).float()


def covariance(keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MEMIT: dW = R K^T (weight * C + K K^T)^-1, C the second moment of generic keys."""
    k, r = keys.double(), resid.double()
    adj_k = torch.linalg.solve(weight * cov.double() + k @ k.T, k)   # [d_in, n]
    return r.float(), adj_k.float()


def nullspace_projector(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit: projector onto the span of C's singular vectors with singular value < threshold."""
    u, s, _ = torch.linalg.svd(cov.double(), full_matrices=False)
    small = u[:, s < threshold]
    return (small @ small.T).float()


def nullspace(keys: torch.Tensor, resid: torch.Tensor, proj: torch.Tensor, prev_kkt: torch.Tensor | None,
              l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AlphaEdit: dW^T = (P (K K^T + C_prev) + l2 I)^-1 P K R^T, so dW = R M^T with M [d_in, n]."""
    k, r, p = keys.double(), resid.double(), proj.double()
    kkt = k @ k.T
    if prev_kkt is not None:
        kkt = kkt + prev_kkt.double()
    lhs = p @ kkt + l2 * torch.eye(k.shape[0], dtype=k.dtype)
    m = torch.linalg.solve(lhs, p @ k)                           # [d_in, n]
    return r.float(), m.float()
