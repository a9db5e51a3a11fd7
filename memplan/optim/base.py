"""One base optimizer for every bundled low-rank method.

The base owns the torch.optim loop (closure, lazy state in ``self.state[p]``,
``state["step"]`` as a 0-d fp32 CPU tensor, the state_dict round trip) and the
GaLore-shaped update of a projected weight:

    refresh the projector every ``update_proj_gap`` steps  -> _refresh (override)
    R = project(G)                                           (low rank)
    N, step_size = _subspace_direction(R)                   -> override (Adam, 8-bit Adam, SGD)
    W += -step_size * scale * back(N)                       (one fused addmm, no m x n temporary)
    W -= lr * weight_decay * W                              (decoupled, after the update)

Parameters of groups without ``rank`` take ``_dense_step`` (plain Adam by
default). A group is *projected* when it has a ``rank`` entry that is not None,
like galore-torch's groups; ``projected_param_groups`` builds such groups.

Fake tensors: under ``FakeTensorMode`` no value is read back except the step
counter, which is a CPU scalar whose value fake mode tracks as a constant;
finite checks and SVD fallbacks are skipped there (see projector.py).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

from .projector import PROJ_TYPES, check_finite, choose_side, project, project_back_, svd_projector


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_common(lr, betas, eps, weight_decay) -> None:
    """torch.optim-style checks; messages name the bad value."""
    _require(not isinstance(lr, bool) and float(lr) >= 0.0, f"Invalid learning rate: {lr!r} (must be >= 0)")
    if betas is not None:
        _require(len(betas) == 2, f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
        for i, b in enumerate(betas):
            _require(0.0 <= b < 1.0, f"Invalid beta parameter at index {i}: {b!r} (must be in [0, 1))")
    if eps is not None:
        _require(eps >= 0.0, f"Invalid epsilon value: {eps!r} (must be >= 0)")
    _require(weight_decay >= 0.0, f"Invalid weight_decay value: {weight_decay!r} (must be >= 0)")


def validate_projection(group: dict) -> None:
    """Checks for the projection entries of a group (only when ``rank`` is set)."""
    if group.get("rank") is None:
        return
    rank, gap = group["rank"], group.get("update_proj_gap")
    _require(isinstance(rank, int) and not isinstance(rank, bool) and rank > 0,
             f"Invalid rank: {rank!r} (must be a positive int)")
    _require(isinstance(gap, int) and not isinstance(gap, bool) and gap > 0,
             f"Invalid update_proj_gap: {gap!r} (must be a positive int)")
    scale = group.get("scale")
    _require(isinstance(scale, (int, float)) and scale > 0, f"Invalid scale: {scale!r} (must be > 0)")
    proj_type = group.get("proj_type", "std")
    _require(proj_type in PROJ_TYPES, f"Invalid proj_type: {proj_type!r} (expected one of {PROJ_TYPES})")


def read_step(step: torch.Tensor) -> int:
    """The int value of ``state["step"]`` (a CPU scalar: no device sync)."""
    return int(step.item())


class _Keep:
    """Hides a state value from torch's load_state_dict, which casts every
    floating state tensor to the parameter's dtype (fp32 absmax / qmaps / Adafactor
    factors of a bf16 parameter would silently lose precision) and rebuilds any
    iterable with ``type(value)(generator)`` (a str such as ``side`` would become
    the generator's repr)."""

    def __init__(self, value: torch.Tensor):
        self.value = value


class LowRankOptimizer(torch.optim.Optimizer):
    """Base class. Subclasses override ``_refresh``, ``_subspace_direction`` and
    ``_dense_step`` (and ``_projected_step`` when the update is not GaLore-shaped)."""

    # group entries that mark a group as projected, with their defaults
    projection_defaults: dict[str, Any] = {"rank": None, "update_proj_gap": 200, "scale": 0.25,
                                           "proj_type": "std"}

    def __init__(self, params, defaults: dict[str, Any]):
        validate_common(defaults["lr"], defaults.get("betas"), defaults.get("eps"), defaults["weight_decay"])
        super().__init__(params, {**self.projection_defaults, **defaults})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_common(group["lr"], group.get("betas"), group.get("eps"), group["weight_decay"])
        validate_projection(group)
        if group.get("rank") is not None:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                _require(p.ndim == 2, f"Projected groups take 2-D weights only; got shape {tuple(p.shape)} for "
                         f"'{names[i] if names else i}'. Put it in a group without 'rank'.")

    # ---- the loop ------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                name = names[i] if names else f"param_groups[{gi}]['params'][{i}]"
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                t = read_step(state["step"])  # steps taken before this one
                if group.get("rank") is not None:
                    self._projected_step(p, grad, state, group, t, name)
                else:
                    check_finite(grad, name)
                    self._dense_step(p, grad, state, group, t + 1)
                state["step"] += 1
        return loss

    # ---- GaLore-shaped projected update ----------------------------------------
    def _projected_step(self, p, grad, state, group, t: int, name: str) -> None:
        if "projector" not in state or t % group["update_proj_gap"] == 0:
            if "side" not in state:
                state["side"] = choose_side(p.shape, group["proj_type"])
            self._refresh(p, grad, state, group, t, name)
        side = state["side"]
        P = state["projector"]
        R = project(grad, P, side)
        check_finite(R, name)  # low-rank, so cheap; catches non-finite G on ordinary steps
        direction, step_size = self._subspace_direction(R, state, group, t + 1)
        project_back_(p, direction.to(p.dtype), P, side, alpha=-step_size * group["scale"])
        if group["weight_decay"] > 0.0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    def _refresh(self, p, grad, state, group, t: int, name: str) -> None:
        """New projector from the SVD of the current gradient (GaLore)."""
        rank = min(group["rank"], *p.shape)
        state["projector"] = svd_projector(grad, rank, state["side"], name, previous=state.get("projector"))

    def _subspace_direction(self, R, state, group, step: int):
        return adam_direction(state, R, group, step)

    def _dense_step(self, p, grad, state, group, step: int) -> None:
        exp_avg, denom, step_size = adam_moments(state, grad, group, step)
        p.addcdiv_(exp_avg, denom, value=-step_size)  # one full-size temporary (denom), not two
        if group["weight_decay"] > 0.0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    # ---- state_dict: keep the saved dtypes -------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        state_dict["state"] = {k: {key: v if key == "step" else _Keep(v) for key, v in s.items()}
                               for k, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        for p, s in self.state.items():
            for key, v in list(s.items()):
                if isinstance(v, _Keep):
                    s[key] = v.value.to(p.device) if torch.is_tensor(v.value) else v.value


def adam_moments(state: dict, grad: torch.Tensor, group: dict, step: int):
    """Update Adam moments (gradient dtype) with galore-torch / HF arithmetic and return
    ``(exp_avg, denom, step_size)``: ``denom = sqrt(v) + eps``,
    ``step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)``."""
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    beta1, beta2 = group["betas"]
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = exp_avg_sq.sqrt().add_(group["eps"])
    step_size = group["lr"]
    if group.get("correct_bias", True):
        step_size = step_size * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)
    return exp_avg, denom, step_size


def adam_direction(state: dict, grad: torch.Tensor, group: dict, step: int):
    """``(m / denom, step_size)`` of ``adam_moments`` (for low-rank moments)."""
    exp_avg, denom, step_size = adam_moments(state, grad, group, step)
    return exp_avg / denom, step_size


def state_is_fake(state: dict) -> bool:
    return any(torch.is_tensor(v) and is_fake(v) for v in state.values())
