"""GoLore (He et al., ICML 2025): GaLore with random projections.

The projector is drawn uniformly from the Stiefel manifold (projector.py) with a
generator seeded per parameter and per refresh step, so runs are reproducible
and no host round trip is needed. The "GoLore@x%" schedule uses GaLore's SVD
projector while ``step < (1 - x) * total_steps`` and the random one after;
``golore_fraction=1.0`` (the default) is random from the first step and needs no
``total_steps``.

Decisions:
- At every refresh the first moment (Adam's ``exp_avg`` or SGD's
  ``momentum_buffer``) is carried into the new subspace,
  ``M <- P_new^T (P_old M)`` (left side; mirrored on the right), computed
  through an ``r x r`` product. The second moment ``exp_avg_sq`` is kept as it
  is: an elementwise second moment has no meaningful linear transport.
- ``GoLoreSGD`` is the momentum-SGD subspace optimizer of the paper's
  convergence proof: ``buf = mu * buf + (1 - dampening) * R``, update
  ``-lr * scale * back(buf)``; non-projected parameters get the same momentum
  SGD with a full-size buffer. Weight decay is decoupled.
"""
from __future__ import annotations

import torch

from .base import LowRankOptimizer, _require
from .projector import make_generator, param_seed, random_projector, svd_projector, transport


class _GoLoreRefresh:
    """Mixin: SVD or random projector by the GoLore@x% schedule, first-moment transport."""

    moment_key = "exp_avg"

    def _check_schedule(self, golore_fraction, total_steps, seed) -> None:
        _require(0.0 <= golore_fraction <= 1.0,
                 f"Invalid golore_fraction: {golore_fraction!r} (must be in [0, 1]; 1.0 = random from step 0)")
        _require(golore_fraction == 1.0 or (isinstance(total_steps, int) and total_steps > 0),
                 f"golore_fraction={golore_fraction} needs total_steps (a positive int), got {total_steps!r}")
        _require(isinstance(seed, int), f"Invalid seed: {seed!r} (must be an int)")

    def _refresh(self, p, grad, state, group, t: int, name: str) -> None:
        rank = min(group["rank"], *p.shape)
        side = state["side"]
        old = state.get("projector")
        switch = 0 if group["golore_fraction"] == 1.0 else \
            int((1.0 - group["golore_fraction"]) * group["total_steps"])
        if t >= switch:
            gen = make_generator(grad, param_seed(name, group["seed"]) + t)
            new = random_projector(tuple(p.shape), rank, side, grad, gen)
        else:
            new = svd_projector(grad, rank, side, name, previous=old)
        if old is not None and self.moment_key in state and new is not old:
            state[self.moment_key] = transport(state[self.moment_key], old, new, side)
        state["projector"] = new


class GoLoreAdamW(_GoLoreRefresh, LowRankOptimizer):
    """AdamW in a random (or scheduled SVD-then-random) subspace.

    Args as ``GaLoreAdamW`` plus ``golore_fraction`` (x of GoLore@x%, default
    1.0), ``total_steps`` (needed when x < 1) and ``seed`` (base of the
    per-parameter generators). Same state and bytes as GaLore at the same rank.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, correct_bias: bool = True, golore_fraction: float = 1.0,
                 total_steps: int | None = None, seed: int = 0):
        self._check_schedule(golore_fraction, total_steps, seed)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias, golore_fraction=golore_fraction,
                                      total_steps=total_steps, seed=seed))


def momentum_update(state: dict, grad: torch.Tensor, group: dict) -> torch.Tensor:
    """``buf = mu * buf + (1 - dampening) * grad`` (buffer in the gradient's dtype)."""
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(grad)
    buf = state["momentum_buffer"]
    buf.mul_(group["momentum"]).add_(grad, alpha=1.0 - group["dampening"])
    return buf


class GoLoreSGD(_GoLoreRefresh, LowRankOptimizer):
    """Momentum SGD in a GoLore subspace (one low-rank buffer, no second moment).

    ``momentum=0`` keeps no buffer at all and steps along the projected gradient.
    With ``golore_fraction=0.0`` this is GaLore's projector with SGD steps, the
    baseline of the paper's counterexample.
    """

    moment_key = "momentum_buffer"

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0, golore_fraction: float = 1.0, total_steps: int | None = None,
                 seed: int = 0):
        _require(0.0 <= momentum < 1.0, f"Invalid momentum value: {momentum!r} (must be in [0, 1))")
        _require(0.0 <= dampening <= 1.0, f"Invalid dampening value: {dampening!r} (must be in [0, 1])")
        self._check_schedule(golore_fraction, total_steps, seed)
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      golore_fraction=golore_fraction, total_steps=total_steps, seed=seed))

    def _direction(self, grad, state, group):
        return momentum_update(state, grad, group) if group["momentum"] > 0 else grad

    def _subspace_direction(self, R, state, group, step: int):
        return self._direction(R, state, group), group["lr"]

    def _dense_step(self, p, grad, state, group, step: int) -> None:
        p.add_(self._direction(grad, state, group), alpha=-group["lr"])
        if group["weight_decay"] > 0.0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])
