"""Per-layer weight update: step each parameter as soon as its gradient is complete.

GaLore's "7B on 24 GB" recipe: one optimizer per parameter, stepped from
``Tensor.register_post_accumulate_grad_hook`` during backward, and the
gradient freed at once, so about one parameter's gradient exists at a time
instead of the whole model's.

Refused configurations (a clear error instead of silently wrong training):
- gradient accumulation: ``gradient_accumulation_steps > 1`` at construction,
  and at run time a second gradient for a parameter before ``step()`` was
  called (that would step every micro-batch);
- global gradient clipping (``max_grad_norm``): the global norm is unknown
  until every gradient exists, and by then the updates are done.

Usage::

    opt = LayerwiseOptimizer(projected_param_groups(model, rank=128), GaLoreAdamW, lr=0.01)
    for batch in data:
        loss = model(batch).loss
        loss.backward()   # parameters are updated here
        opt.step()        # marks the end of the step (runs the closure if given)
        opt.zero_grad()   # nothing left to free; kept for the torch.optim loop shape
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class LayerwiseOptimizer:
    """Wraps ``optimizer_cls`` (any torch.optim-style class, e.g. ``GaLoreAdamW``
    or ``torch.optim.AdamW``), one instance per parameter, built with the
    parameter's group entries and ``**defaults``."""

    def __init__(self, params, optimizer_cls: Callable[..., torch.optim.Optimizer], *,
                 gradient_accumulation_steps: int = 1, max_grad_norm: float | None = None, **defaults: Any):
        if gradient_accumulation_steps != 1:
            raise ValueError(
                f"Per-layer updates cannot accumulate gradients (gradient_accumulation_steps="
                f"{gradient_accumulation_steps!r}): each gradient is applied and freed during backward. "
                "Use a larger batch, or a normal (non-layerwise) optimizer.")
        if max_grad_norm is not None:
            raise ValueError(
                f"Per-layer updates cannot clip by the global gradient norm (max_grad_norm={max_grad_norm!r}): "
                "parameters are updated before all gradients exist. Disable clipping or layerwise updates.")
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.optimizers: list[torch.optim.Optimizer] = []
        self._by_param: dict[int, tuple[torch.optim.Optimizer, str]] = {}
        self._fired: set[int] = set()
        self._handles = []
        for gi, group in enumerate(groups):
            names = group.get("param_names")
            entries = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            for i, p in enumerate(group["params"]):
                if not p.requires_grad:
                    continue
                name = names[i] if names else f"param_groups[{gi}]['params'][{i}]"
                sub = {"params": [p], **entries}
                if names and _accepts_names(optimizer_cls):
                    sub["param_names"] = [name]
                opt = optimizer_cls([sub], **defaults)
                self.optimizers.append(opt)
                self._by_param[id(p)] = (opt, name)
                self._handles.append(p.register_post_accumulate_grad_hook(self._hook))

    def _hook(self, p: torch.Tensor) -> None:
        opt, name = self._by_param[id(p)]
        if id(p) in self._fired:
            raise RuntimeError(
                f"Parameter '{name}' received a second gradient before step(): gradient accumulation is not "
                "supported with per-layer updates (every backward would update the weights). Call step() "
                "after each backward, or use a normal optimizer.")
        self._fired.add(id(p))
        opt.step()
        p.grad = None  # free the gradient now: the point of per-layer updates

    def step(self, closure: Callable[[], Any] | None = None):
        """End of a training step (updates already happened in backward). A
        closure runs forward and backward, which performs the updates."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._fired.clear()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self) -> list[dict]:
        """All inner groups (one per parameter): set ``lr`` here for schedules."""
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(f"State dict holds {len(saved)} per-parameter optimizers, this wrapper has "
                             f"{len(self.optimizers)}: it was saved for a different model or grouping")
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)

    def remove_hooks(self) -> None:
        """Detach from the parameters (after this, backward no longer updates them)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _accepts_names(optimizer_cls) -> bool:
    # torch.optim classes accept "param_names" in a group since torch 2.6; ours always do
    return isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
