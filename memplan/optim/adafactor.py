"""Adafactor (Shazeer & Stern, ICML 2018) with fp32 state and an optional first moment.

memplan's ``adafactor`` memory rule is the configuration the GaLore paper
compares against: fp32 factored second moment (a row factor of ``m`` and a
column factor of ``n`` elements for a matrix; a full second moment for vectors)
and an fp32 first moment when ``beta1`` is set. ``torch.optim.Adafactor`` keeps
no first moment and factors differently, so we bundle this one.

Update (the paper's Algorithm 4 with an explicit learning rate, i.e.
``relative_step=False``, ``scale_parameter=False``, as HF's ``Adafactor``):
    beta2_t = 1 - t^decay_rate                                  (decay_rate -0.8)
    R <- beta2_t R + (1 - beta2_t) mean_cols(G^2 + eps1)       (m,)
    C <- beta2_t C + (1 - beta2_t) mean_rows(G^2 + eps1)       (n,)
    V_hat = (R / mean(R)) outer C;  U = G / sqrt(V_hat)
    U <- U / max(1, RMS(U) / clip_threshold)
    M <- beta1 M + (1 - beta1) U        (when beta1 is set)
    W <- W - lr * M  (or U);  W <- W - lr * wd * W (decoupled)
Tensors with more than 2 dims are factored over their last two dims.
The clip divides by a tensor (``torch.clamp``), so no value is read back.
"""
from __future__ import annotations

import torch

from .base import LowRankOptimizer, _require


class Adafactor(LowRankOptimizer):
    """Adafactor with fp32 state. ``beta1=None`` keeps no first moment.

    State per matrix ``(m, n)``: ``exp_avg_sq_row`` (m), ``exp_avg_sq_col`` (n),
    ``exp_avg`` (m x n, if beta1), all fp32, and ``step``; per vector:
    ``exp_avg_sq`` (+ ``exp_avg``), fp32.
    """

    def __init__(self, params, lr: float = 1e-3, beta1: float | None = 0.9, decay_rate: float = -0.8,
                 eps1: float = 1e-30, clip_threshold: float = 1.0, weight_decay: float = 0.0):
        _require(beta1 is None or 0.0 <= beta1 < 1.0, f"Invalid beta1: {beta1!r} (None or in [0, 1))")
        _require(decay_rate < 0.0, f"Invalid decay_rate: {decay_rate!r} (must be < 0)")
        _require(eps1 >= 0.0, f"Invalid eps1: {eps1!r} (must be >= 0)")
        _require(clip_threshold > 0.0, f"Invalid clip_threshold: {clip_threshold!r} (must be > 0)")
        super().__init__(params, dict(lr=lr, beta1=beta1, decay_rate=decay_rate, eps1=eps1,
                                      clip_threshold=clip_threshold, weight_decay=weight_decay))

    def add_param_group(self, param_group) -> None:
        if param_group.get("rank") is not None:
            raise ValueError(f"Adafactor does not project gradients (got rank={param_group['rank']!r})")
        super().add_param_group(param_group)

    def _dense_step(self, p, grad, state, group, step: int) -> None:
        g = grad.float()
        factored = g.ndim >= 2
        if "exp_avg_sq_row" not in state and "exp_avg_sq" not in state:
            if factored:
                state["exp_avg_sq_row"] = torch.zeros(g.shape[:-1], dtype=torch.float32, device=g.device)
                state["exp_avg_sq_col"] = torch.zeros(g.shape[:-2] + g.shape[-1:], dtype=torch.float32,
                                                      device=g.device)
            else:
                state["exp_avg_sq"] = torch.zeros_like(g)
            if group["beta1"] is not None:
                state["exp_avg"] = torch.zeros_like(g)
        beta2t = 1.0 - step ** group["decay_rate"]
        sq = g * g + group["eps1"]
        if factored:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(beta2t).add_(sq.mean(dim=-1), alpha=1.0 - beta2t)
            col.mul_(beta2t).add_(sq.mean(dim=-2), alpha=1.0 - beta2t)
            del sq
            r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
            c_factor = col.unsqueeze(-2).rsqrt()
            update = g * r_factor * c_factor
        else:
            v = state["exp_avg_sq"]
            v.mul_(beta2t).add_(sq, alpha=1.0 - beta2t)
            update = g * v.rsqrt()
        rms = update.pow(2).mean().sqrt()
        update.div_((rms / group["clip_threshold"]).clamp(min=1.0))
        if group["beta1"] is not None:
            state["exp_avg"].lerp_(update, 1.0 - group["beta1"])
            update = state["exp_avg"]
        lr, wd = group["lr"], group["weight_decay"]
        work = p if p.dtype == torch.float32 else p.float()
        work.add_(update, alpha=-lr)
        if wd > 0.0:
            work.mul_(1.0 - lr * wd)
        if work is not p:
            p.copy_(work)
