"""SUMO (Refael et al., NeurIPS 2025): subspace momentum, orthogonalized exactly.

Per projected weight ``(m, n)``, written for ``m >= n`` (mirrored otherwise, so
``Q`` always spans the larger side):

1. every ``update_proj_gap`` steps, ``Q`` (``m x r``) = top-r left singular
   vectors of ``G``: randomized truncated SVD (Halko et al.; ``oversample`` 8,
   ``power_iters`` 1) by default, or the exact SVD (``svd="exact"``);
2. on a refresh the moment is carried over: ``M <- (Q_new^T Q_old) M``;
3. ``G_hat = Q^T G``; ``M <- mu * M + G_hat``;
4. ``O = U V^T`` from the SVD of the small ``r x n`` moment (exact), or from
   ``ns_steps`` cubic Newton-Schulz iterations (``orthogonalize="newton_schulz"``);
5. norm-growth limiter: if ``||O_t|| > gamma * ||O_{t-1}||`` then
   ``O_t <- O_t * gamma * ||O_{t-1}|| / ||O_t||``; one fp32 scalar per weight;
6. ``W <- W - lr * s * (Q O + (G - Q G_hat)) - lr * wd * W`` with
   ``s = scale * sqrt(max(m, n))`` (``scale`` is alpha; Muon-style scaling).
   The out-of-subspace gradient term is applied straight from ``G``, with no
   extra state and no ``m x n`` temporary (two fused ``addmm``/``add`` calls).

State per projected weight: ``projector`` Q (``K x r``), ``momentum`` M
(``r x k``), ``prev_norm`` (0-d fp32), ``step``, ``side``. Non-projected
parameters get AdamW (torch arithmetic; the paper does not say, our choice).
The limiter is a ``torch.where`` so no value is read back (fake-tensor safe).
If the randomized SVD fails, the previous ``Q`` is kept (warning), as for GaLore;
if the moment's SVD fails, Newton-Schulz (20 iterations) orthogonalizes it instead.
"""
from __future__ import annotations

import math
import warnings

import torch

from .base import LowRankOptimizer, _require
from .projector import check_finite, make_generator, param_seed, randomized_range, svd_projector


def orthogonalize_svd(M: torch.Tensor) -> torch.Tensor:
    """``U V^T`` of ``M`` (fp32): the nearest semi-orthogonal matrix. If the SVD
    fails to converge (in fp32 and fp64), falls back to 20 Newton-Schulz
    iterations, with a warning."""
    try:
        U, _, Vh = torch.linalg.svd(M.float(), full_matrices=False)
    except torch.linalg.LinAlgError:
        try:
            U, _, Vh = torch.linalg.svd(M.double(), full_matrices=False)
        except torch.linalg.LinAlgError:
            warnings.warn("SVD of the SUMO moment failed; orthogonalizing with Newton-Schulz instead")
            return orthogonalize_newton_schulz(M, steps=20)
    return (U @ Vh).float()


def orthogonalize_newton_schulz(M: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Cubic Newton-Schulz ``X <- 1.5 X - 0.5 X X^T X`` after scaling by the
    Frobenius norm (so every singular value is in (0, 1]). Converges to ``U V^T``
    quadratically once singular values are near 1; inexact for ill-conditioned M,
    which is why the exact SVD is SUMO's default."""
    X = M.float()
    transpose = X.shape[0] > X.shape[1]
    if transpose:
        X = X.T
    X = X / X.norm().clamp(min=1e-12)
    for _ in range(steps):
        X = 1.5 * X - 0.5 * (X @ X.T) @ X
    return X.T if transpose else X


class SUMO(LowRankOptimizer):
    """SUMO optimizer. Args: ``lr``; ``momentum`` (mu, 0.95); ``gamma`` (norm-growth
    limit, 1.1); ``svd`` ("randomized" | "exact") for the subspace; ``orthogonalize``
    ("svd" | "newton_schulz"), ``ns_steps`` (5); ``oversample`` (8), ``power_iters``
    (1), ``seed``; ``betas``/``eps`` for the AdamW of non-projected parameters;
    ``weight_decay`` (decoupled). Groups with ``rank`` read ``update_proj_gap``
    (K_s, 200) and ``scale`` (alpha)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, gamma: float = 1.1,
                 svd: str = "randomized", orthogonalize: str = "svd", ns_steps: int = 5,
                 oversample: int = 8, power_iters: int = 1, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0):
        _require(0.0 <= momentum < 1.0, f"Invalid momentum value: {momentum!r} (must be in [0, 1))")
        _require(gamma >= 1.0, f"Invalid gamma: {gamma!r} (the norm-growth limit must be >= 1)")
        _require(svd in ("randomized", "exact"), f"Invalid svd: {svd!r} (expected 'randomized' or 'exact')")
        _require(orthogonalize in ("svd", "newton_schulz"),
                 f"Invalid orthogonalize: {orthogonalize!r} (expected 'svd' or 'newton_schulz')")
        _require(isinstance(ns_steps, int) and ns_steps > 0, f"Invalid ns_steps: {ns_steps!r} (positive int)")
        _require(isinstance(oversample, int) and oversample >= 0, f"Invalid oversample: {oversample!r}")
        _require(isinstance(power_iters, int) and power_iters >= 0, f"Invalid power_iters: {power_iters!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, gamma=gamma, svd=svd,
                                      orthogonalize=orthogonalize, ns_steps=ns_steps, oversample=oversample,
                                      power_iters=power_iters, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, seed=seed))

    def _projected_step(self, p, grad, state, group, t: int, name: str) -> None:
        m, n = p.shape
        # work on the "tall" orientation: Q spans the larger side
        G = grad if m >= n else grad.T
        if "projector" not in state or t % group["update_proj_gap"] == 0:
            self._refresh_q(G, state, group, t, name)
        Q = state["projector"]  # (K, r)
        G_hat = Q.T @ G  # (r, k)
        check_finite(G_hat, name)
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(G_hat)
            state["prev_norm"] = torch.zeros((), dtype=torch.float32, device=p.device)
        M = state["momentum"]
        M.mul_(group["momentum"]).add_(G_hat)
        if group["orthogonalize"] == "svd":
            O = orthogonalize_svd(M)
        else:
            O = orthogonalize_newton_schulz(M, group["ns_steps"])
        O = self._limit_growth(O, state, group)
        s = group["lr"] * group["scale"] * math.sqrt(max(m, n))
        W = p if m >= n else p.T
        W.add_(G, alpha=-s)  # the gradient outside the subspace ...
        W.addmm_(Q, (O.to(G.dtype) - G_hat), alpha=-s)  # ... minus its in-subspace part, plus Q O
        if group["weight_decay"] > 0.0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    @staticmethod
    def _limit_growth(O: torch.Tensor, state, group) -> torch.Tensor:
        norm = O.norm()
        prev = state["prev_norm"]
        limit = group["gamma"] * prev
        factor = torch.where((prev > 0) & (norm > limit), limit / norm.clamp(min=1e-30), torch.ones_like(norm))
        state["prev_norm"].copy_(norm * factor)
        return O * factor

    def _refresh_q(self, G, state, group, t: int, name: str) -> None:
        rank = min(group["rank"], *G.shape)
        old = state.get("projector")
        if group["svd"] == "exact":
            new = svd_projector(G, rank, "left", name, previous=old)
        else:
            gen = make_generator(G, param_seed(name, group["seed"]) + t)
            try:
                new = randomized_range(G, rank, group["oversample"], group["power_iters"], gen, name)
            except RuntimeError:
                if old is None:
                    raise
                warnings.warn(f"Randomized SVD failed for '{name}'; keeping the previous projector")
                new = old
        if old is not None and "momentum" in state and new is not old:
            state["momentum"] = (new.T @ old) @ state["momentum"]
        state["projector"] = new

    def _dense_step(self, p, grad, state, group, step: int) -> None:
        """AdamW with torch.optim.AdamW's arithmetic (non-projected parameters)."""
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if wd > 0.0:
            p.mul_(1.0 - lr * wd)
        state["exp_avg"].lerp_(grad, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = state["exp_avg_sq"].sqrt().div_(math.sqrt(1.0 - beta2 ** step)).add_(group["eps"])  # one temp
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1.0 - beta1 ** step))
