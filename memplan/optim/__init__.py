"""Bundled memory-efficient optimizers (torch): GaLore, GoLore, SUMO, GradNormLoRP,
8-bit AdamW, Adafactor, and the per-layer update wrapper.

    from memplan.optim import GaLoreAdamW, projected_param_groups
    groups = projected_param_groups(model, rank=128, update_proj_gap=200, scale=0.25)
    opt = GaLoreAdamW(groups, lr=0.01)

Their state layout is the one the estimator counts (docs/CONTRACT.md);
``optimizer_state_bytes`` sums it.
"""
from .adafactor import Adafactor
from .adamw8bit import AdamW8bit
from .base import LowRankOptimizer
from .build import METHODS, build_optimizer, optimizer_state_bytes
from .galore import GaLoreAdamW, GaLoreAdamW8bit
from .golore import GoLoreAdamW, GoLoreSGD
from .gradnormlorp import GradNormLoRP, GradNormLoRP8bit, weight_norm_grads
from .groups import DEFAULT_TARGET_MODULES, infer_family, is_target, projected_param_groups
from .layerwise import LayerwiseOptimizer
from .sumo import SUMO

__all__ = [
    "Adafactor", "AdamW8bit", "DEFAULT_TARGET_MODULES", "GaLoreAdamW", "GaLoreAdamW8bit", "GoLoreAdamW",
    "GoLoreSGD", "GradNormLoRP", "GradNormLoRP8bit", "LayerwiseOptimizer", "LowRankOptimizer", "METHODS",
    "SUMO", "build_optimizer", "infer_family", "is_target", "optimizer_state_bytes", "projected_param_groups",
    "weight_norm_grads",
]
