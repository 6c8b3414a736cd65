"""The three closed-form solves. Each returns low-rank factors (U [d_out, n], V [d_in, n]), dW = U V^T.

keys: [d_in, n] (one column per key), resid: [d_out, n] (the change wanted at each key).
All in float64 on the CPU, as MEMIT does, then returned as float32.
"""

from __future__ import annotations

import torch


def isotropic(keys: torch.Tensor, resid: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RoSE's Isotropic Geometric Alignment: the minimum-norm dW with dW K ~= R (C -> lam I).

    dW = R (K^T K + lam' I)^-1 K^T, lam' = lam * mean squared key norm (scale-free ridge).
    """
    k, r = keys.double(), resid.double()
    gram = k.T @ k
    ridge = lam * gram.diagonal().mean()
    v = k @ torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), torch.eye(gram.shape[0], dtype=gram.dtype))
    return r.float(), v.float()


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
