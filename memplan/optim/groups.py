"""Which weights are projected: the target-module rule shared with the estimator.

A parameter is projected when it is 2-D, named ``<module>.weight``, and the
module path ends with one of the target modules at a dot boundary
(``is_target``). The defaults per architecture family and the rule itself are
the estimator's (``memplan/inventory.py``), imported here.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

# one table and one matching rule for the estimator and the optimizers
from memplan.inventory import DEFAULT_TARGET_MODULES, is_target
from memplan.profiles import FAMILIES as _MODEL_TYPES  # HF model_type -> family


def infer_family(model: torch.nn.Module) -> str:
    """The architecture family of ``model``: its HF ``config.model_type`` if any,
    else recognized from its module names."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if "q_proj" in leaves and ("gate_proj" in leaves or "up_proj" in leaves):
        return "llama"
    if "q_proj" in leaves and "fc1" in leaves:
        return "opt"
    if "query" in leaves and "value" in leaves:
        return "bert"
    if "c_attn" in leaves:
        return "gpt2"
    raise ValueError("Cannot tell the architecture family of this model from its module names; "
                     "pass target_modules=... (e.g. ('q_proj', 'v_proj'))")


def split_parameters(model: torch.nn.Module, target_modules: Iterable[str] | None = None):
    """``(projected, other)``, each a list of ``(name, param)`` of trainable parameters."""
    if isinstance(target_modules, str):  # "q_proj,v_proj", as on the command line
        target_modules = [t.strip() for t in target_modules.split(",") if t.strip()]
    targets = tuple(target_modules) if target_modules is not None else DEFAULT_TARGET_MODULES[infer_family(model)]
    projected, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module_path, _, leaf = name.rpartition(".")
        hit = p.ndim == 2 and leaf == "weight" and is_target(module_path, targets)
        (projected if hit else other).append((name, p))
    if not projected:
        raise ValueError(f"None of the target modules {targets} matches a 2-D weight of the model")
    return projected, other


def projected_param_groups(model: torch.nn.Module, rank: int = 128, update_proj_gap: int = 200,
                           scale: float = 0.25, proj_type: str = "std",
                           target_modules: Iterable[str] | None = None, weight_decay: float | None = None):
    """Two param groups for the bundled optimizers: the projected 2-D target
    weights (with ``rank``, ``update_proj_gap``, ``scale``, ``proj_type``) and
    everything else. Each group carries ``param_names`` so errors can name the
    parameter. ``weight_decay``, if given, is set on both groups."""
    projected, other = split_parameters(model, target_modules)
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    groups = [{"params": [p for _, p in projected], "param_names": [n for n, _ in projected],
               "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale, "proj_type": proj_type, **extra}]
    if other:
        groups.append({"params": [p for _, p in other], "param_names": [n for n, _ in other], **extra})
    return groups
