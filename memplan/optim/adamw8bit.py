"""AdamW with 8-bit block-wise state (bitsandbytes semantics, pure PyTorch).

Used for the ``adam8bit`` baseline and for the non-projected parameters of the
8-bit low-rank methods. Unlike ``bitsandbytes.optim.AdamW8bit`` it runs under
``FakeTensorMode`` (no scalar is read back), so memplan can measure it on
models that do not fit in memory. tests/test_optim_8bit.py checks it against
bitsandbytes numerically.

State per parameter of N elements: ``step`` (0-d fp32) and, for N >= 4096,
``exp_avg`` / ``exp_avg_sq`` (uint8, N each), ``exp_avg_absmax`` /
``exp_avg_sq_absmax`` (fp32, ceil(N/256) each) and references to the two shared
256-entry fp32 maps; for N < 4096, fp32 ``exp_avg`` / ``exp_avg_sq``.
"""
from __future__ import annotations

from .base import LowRankOptimizer
from .galore import EightBitMoments


class AdamW8bit(EightBitMoments, LowRankOptimizer):
    """AdamW with 8-bit block-wise moments; defaults as bitsandbytes' AdamW8bit
    (betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2). Projection entries in a
    group are refused: use GaLoreAdamW8bit for that."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def add_param_group(self, param_group) -> None:
        if param_group.get("rank") is not None:
            raise ValueError(f"AdamW8bit does not project gradients (got rank={param_group['rank']!r}); "
                             "use GaLoreAdamW8bit for projected groups")
        super().add_param_group(param_group)
