"""LoRA, ReLoRA and low-rank wrapping of the target linears (ALGORITHMS.md).

- ``lora`` / ``relora``: the base ``weight`` (m, n) is frozen; ``lora_A`` (r, n)
  and ``lora_B`` (m, r) are trained; ``y = x W^T + scale * (x A^T) B^T``. The
  extra saved activation per adapted linear is ``x A^T`` (B, T, r).
- ``lowrank``: ``W = B A`` trained from scratch; no full ``weight`` is stored.

Parameter names: the base keeps its HF name (``...q_proj.weight``), the factors
are ``...q_proj.lora_A`` and ``...q_proj.lora_B``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRALinear", "LowRankLinear", "apply_lora", "DEFAULT_TARGETS", "merge_lora"]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        super().__init__()
        m, n = base.weight.shape
        dt, dev = base.weight.dtype, base.weight.device
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, n, dtype=dt, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(m, rank, dtype=dt, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = (alpha if alpha is not None else rank) / rank
        self.in_features, self.out_features = n, m

    def forward(self, x):
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


class LowRankLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        m, n = base.weight.shape
        dt, dev = base.weight.dtype, base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, n, dtype=dt, device=dev))
        self.lora_B = nn.Parameter(torch.empty(m, rank, dtype=dt, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))
        self.in_features, self.out_features = n, m

    def forward(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B)


def apply_lora(model: nn.Module, rank: int, *, kind: str = "lora", target_modules=DEFAULT_TARGETS,
               train_non_target: bool = True, alpha: float | None = None) -> nn.Module:
    """Replace every target ``nn.Linear`` in place; returns ``model``.

    ``train_non_target``: keep embeddings, head and norms trainable (pre-training,
    GaLore Table 2); False freezes everything but the factors (fine-tuning).
    ``kind="lowrank"`` drops the full weight and trains ``B A`` from scratch.
    """
    if kind not in ("lora", "relora", "lowrank"):
        raise ValueError(f"kind must be 'lora', 'relora' or 'lowrank', got {kind!r}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    targets = tuple(target_modules)
    replaced = 0
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and cname in targets:
                new = LowRankLinear(child, rank) if kind == "lowrank" else LoRALinear(child, rank, alpha)
                setattr(mod, cname, new)
                replaced += 1
    if replaced == 0:
        raise ValueError(f"No nn.Linear named one of {targets} found in the model")
    for name, p in model.named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            p.requires_grad_(True)
        elif kind != "lowrank" and any(f".{t}." in f".{name}" for t in targets):
            p.requires_grad_(False)  # frozen base weight
        else:
            p.requires_grad_(train_non_target)
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """ReLoRA merge: ``W += scale * B A`` (a temporary m x n), then restart the factors."""
    for mod in model.modules():
        if isinstance(mod, LoRALinear):
            mod.weight.add_(mod.lora_B @ mod.lora_A, alpha=mod.scale)
            nn.init.kaiming_uniform_(mod.lora_A, a=math.sqrt(5))
            mod.lora_B.zero_()
