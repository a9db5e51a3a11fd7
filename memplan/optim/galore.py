"""GaLore (Zhao et al., ICML 2024): Adam on SVD-projected low-rank gradients.

Step for step the same arithmetic as the reference galore-torch 1.0
``GaLoreAdamW`` (tested in tests/test_optim_galore.py): the projector is
refreshed at steps 0, T, 2T, ... from the fp32 SVD of the gradient and cast
back to the gradient's dtype; moments are *not* carried across a refresh (as in
the paper and its code); Adam uses galore-torch's bias correction
(``lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` with ``eps`` added to ``sqrt(v)``),
and decoupled weight decay is applied after the update.

One difference, on purpose: the projected-back update is added with a single
``addmm_``, so no ``m x n`` temporary exists on an ordinary step (galore-torch
holds two). The result differs only by float round-off.
"""
from __future__ import annotations

import torch

from .base import LowRankOptimizer
from .quant8bit import BLOCK_SIZE, adam8bit_direction, init_moment, n_blocks


class GaLoreAdamW(LowRankOptimizer):
    """AdamW with GaLore projection for groups that carry ``rank``.

    Args:
        params: parameters or groups (see ``projected_param_groups``). A group
            with ``rank`` also reads ``update_proj_gap`` (T, default 200),
            ``scale`` (alpha, default 0.25) and ``proj_type`` ("std",
            "reverse_std", "left", "right"; default "std").
        lr: learning rate (the GaLore recipes use 0.01 for pre-training).
        betas, eps, weight_decay, correct_bias: as galore-torch's AdamW
            (eps defaults to 1e-6 there and here).

    State per projected weight: ``step`` (0-d fp32), ``projector`` (r x k, grad
    dtype), ``exp_avg`` and ``exp_avg_sq`` (r x K, grad dtype), ``side`` (str).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, correct_bias: bool = True):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias))


class EightBitMoments:
    """Mixin: Adam moments in bitsandbytes' block-wise 8-bit layout (quant8bit.py),
    for the low-rank moments and for non-projected parameters alike.

    Arithmetic follows bitsandbytes' 8-bit Adam: ``denom = sqrt(v)/sqrt(1-beta2^t) + eps``,
    decoupled weight decay (before the update for dense parameters, after it for
    projected ones, as in GaLore). Tensors under 4096 elements keep fp32 moments.
    """

    def _subspace_direction(self, R, state, group, step: int):
        if "exp_avg" not in state:
            init_moment(state, "exp_avg", R, signed=True)
            init_moment(state, "exp_avg_sq", R, signed=False)
        beta1, beta2 = group["betas"]
        return adam8bit_direction(state, R, beta1, beta2, group["eps"], step), group["lr"]

    def _dense_step(self, p, grad, state, group, step: int) -> None:
        if "exp_avg" not in state:
            init_moment(state, "exp_avg", p, signed=True)
            init_moment(state, "exp_avg_sq", p, signed=False)
        # 8-bit moments of large tensors are updated CHUNK elements at a time (whole blocks),
        # so the fp32 temporaries are a few chunk-sized buffers, not several copies of the tensor
        chunked = state["exp_avg"].dtype == torch.uint8 and p.is_contiguous() and p.numel() > CHUNK
        starts = range(0, p.numel(), CHUNK) if chunked else [0]
        for start in starts:
            sub = _chunk(state, start, CHUNK) if chunked else state
            end = start + CHUNK if chunked else p.numel()
            p_part = p.view(-1)[start:end] if chunked else p
            g_part = grad.reshape(-1)[start:end] if chunked else grad
            direction, lr = self._subspace_direction(g_part, sub, group, step)
            work = p_part if p.dtype == torch.float32 else p_part.float()
            if group["weight_decay"] > 0.0:
                work.mul_(1.0 - lr * group["weight_decay"])
            work.add_(direction, alpha=-lr)
            if work is not p_part:
                p_part.copy_(work)


CHUNK = 1 << 20  # elements per chunk of a dense 8-bit update (a multiple of the 256-element block)


def _chunk(state: dict, start: int, size: int) -> dict:
    """Views of the 8-bit moments for elements ``[start, start + size)`` (block aligned)."""
    first = start // BLOCK_SIZE
    sub = {}
    for key in ("exp_avg", "exp_avg_sq"):
        sub[key] = state[key].view(-1)[start:start + size]
        sub[key + "_absmax"] = state[key + "_absmax"][first:first + n_blocks(sub[key].numel())]
        sub[key + "_qmap"] = state[key + "_qmap"]
    return sub


class GaLoreAdamW8bit(EightBitMoments, GaLoreAdamW):
    """GaLore with 8-bit block-wise low-rank moments (and 8-bit Adam for the rest).

    The projector stays in the gradient's dtype. eps defaults to 1e-8 as in
    bitsandbytes' AdamW8bit.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
