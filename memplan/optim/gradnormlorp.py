"""GradNormLoRP (Huang et al., AAAI 2025): weight-normalized, low-rank projected training.

Each projected weight is reparametrized as ``W = g * V / ||V||_row`` (weight
normalization over the input dimension, one magnitude per output row, as
``torch.nn.utils.parametrizations.weight_norm(dim=0)``). Because the direction
is scale-free, ``V`` is ``W`` itself after every step: only ``g`` (``m``
elements) is kept in optimizer state, never a second full-size weight.

Step for a weight with gradient ``G = dL/dW`` (rows ``i``):
    dL/dg_i = G_i . V_i / ||V_i||
    dL/dV_i = (g_i / ||V_i||) (G_i - dL/dg_i * V_i / ||V_i||)
``dL/dV`` goes through GaLore (SVD projector refreshed every T steps, low-rank
Adam, projected back and scaled); on ordinary steps its projection is formed
from ``G`` and ``W`` directly with two low-rank products, so no ``m x n``
temporary exists (on a refresh ``dL/dV`` is built once in fp32, for its SVD; row
norms are accumulated in fp32 without an fp32 copy of ``W``). ``g``
gets plain Adam. Then ``W <- g_new * V_new / ||V_new||_row`` in place. Weight
decay is decoupled and applied to ``g`` (equivalently to ``W``: decaying ``V``
would do nothing, the direction being scale-free).

State per projected weight: GaLore's (``projector``, ``exp_avg``,
``exp_avg_sq``, ``step``, ``side``) plus ``magnitude`` and its two moments
``magnitude_exp_avg`` / ``magnitude_exp_avg_sq`` (``m`` each, gradient dtype).
The 8-bit variant keeps the low-rank moments (and the non-projected
parameters' moments) in block-wise 8 bits; the magnitude moments stay in the
gradient dtype.
"""
from __future__ import annotations

import torch

from .base import LowRankOptimizer, adam_direction
from .galore import EightBitMoments
from .projector import check_finite, choose_side, project_back_, svd_projector

_TINY = 1e-12  # floor of a row norm (an all-zero row has no direction)


def weight_norm_grads(V: torch.Tensor, g: torch.Tensor, G: torch.Tensor):
    """Gradients of weight normalization (dim=0) from ``G = dL/dW``: returns
    ``(dL/dg, dL/dV)`` with ``dL/dg`` of shape ``(m,)``. Reference formulas
    (Salimans & Kingma 2016, eq. 3), used by the tests and on refresh steps."""
    norm = V.float().norm(dim=1).clamp(min=_TINY)
    dg = (G.float() * V.float()).sum(dim=1) / norm
    dV = (g.float() / norm)[:, None] * (G.float() - (dg / norm)[:, None] * V.float())
    return dg.to(G.dtype), dV.to(G.dtype)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products without an m x n temporary (batched 1 x n @ n x 1)."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(a.shape[0])


class GradNormLoRP(LowRankOptimizer):
    """GradNormLoRP with Adam; hyperparameters and defaults as ``GaLoreAdamW``
    (rank 128, scale 0.25, T 200, lr 0.01 in the recipes)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, correct_bias: bool = True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias))

    def _projected_step(self, p, grad, state, group, t: int, name: str) -> None:
        # ||V|| (V = W), accumulated in fp32 without an fp32 copy of W
        norm = torch.linalg.vector_norm(p, dim=1, dtype=torch.float32).clamp(min=_TINY).to(grad.dtype)
        if "magnitude" not in state:
            state["magnitude"] = norm.clone()
            state["side"] = choose_side(p.shape, group["proj_type"])
        g = state["magnitude"]
        dg = _row_dot(grad, p) / norm
        c1, c2 = g / norm, g * dg / (norm * norm)  # dL/dV = c1 * G - c2 * V, row-wise
        side = state["side"]
        if "projector" not in state or t % group["update_proj_gap"] == 0:
            # dL/dV in fp32 (the matrix whose SVD is taken): one m x n fp32 buffer, like GaLore's copy of G
            dV = grad.to(torch.float32, copy=True).mul_(c1.float()[:, None])
            dV.addcmul_(p, c2.float()[:, None], value=-1.0)
            rank = min(group["rank"], *p.shape)
            state["projector"] = svd_projector(dV, rank, side, name, previous=state.get("projector"),
                                               dtype=grad.dtype)
            del dV
        P = state["projector"]
        if side == "right":  # R = dV @ P^T, (m, r)
            R = c1[:, None] * (grad @ P.T) - c2[:, None] * (p @ P.T)
        else:  # R = P^T dV, (r, n)
            R = (P * c1[:, None]).T @ grad - (P * c2[:, None]).T @ p
        check_finite(R, name)
        direction, step_size = self._subspace_direction(R, state, group, t + 1)
        project_back_(p, direction.to(p.dtype), P, side, alpha=-step_size * group["scale"])  # V_new
        g_state = {"exp_avg": state.get("magnitude_exp_avg"), "exp_avg_sq": state.get("magnitude_exp_avg_sq")}
        if g_state["exp_avg"] is None:
            g_state = {}
        g_dir, g_step = adam_direction(g_state, dg, group, t + 1)
        state["magnitude_exp_avg"], state["magnitude_exp_avg_sq"] = g_state["exp_avg"], g_state["exp_avg_sq"]
        g.add_(g_dir, alpha=-g_step)
        if group["weight_decay"] > 0.0:
            g.mul_(1.0 - group["lr"] * group["weight_decay"])
        new_norm = torch.linalg.vector_norm(p, dim=1, dtype=torch.float32).clamp(min=_TINY)
        p.mul_((g.float() / new_norm).to(p.dtype)[:, None])  # W = g * V_new / ||V_new||


class GradNormLoRP8bit(EightBitMoments, GradNormLoRP):
    """GradNormLoRP with 8-bit block-wise low-rank moments (bitsandbytes rule) and
    8-bit Adam for non-projected parameters; eps defaults to 1e-8 as bitsandbytes."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
