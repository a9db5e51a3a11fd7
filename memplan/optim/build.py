"""Build the optimizer of any estimator method, and count the bytes it holds.

``build_optimizer(model, "galore", rank=128, update_gap=200)`` returns a ready
optimizer for ``model`` exactly as the estimator models it (same target
modules, same state layout), and ``optimizer_state_bytes(opt)`` sums its state
tensors into the estimator's two categories (``optimizer_states`` and
``projectors``), storages de-duplicated, working under ``FakeTensorMode`` too.
"""
from __future__ import annotations

from typing import Any

import torch

from .adafactor import Adafactor
from .adamw8bit import AdamW8bit
from .galore import GaLoreAdamW, GaLoreAdamW8bit
from .golore import GoLoreAdamW
from .gradnormlorp import GradNormLoRP, GradNormLoRP8bit
from .groups import projected_param_groups
from .layerwise import LayerwiseOptimizer
from .sumo import SUMO

# method -> (class, default lr, default scale); None class = torch baseline
_PROJECTED = {
    "galore": (GaLoreAdamW, 0.01, 0.25),
    "galore8bit": (GaLoreAdamW8bit, 0.01, 0.25),
    "golore": (GoLoreAdamW, 0.01, 0.25),
    "sumo": (SUMO, 0.01, 0.2),  # alpha of s = alpha * sqrt(max(m, n)) (Muon-style RMS matching)
    "gradnormlorp": (GradNormLoRP, 0.01, 0.25),
    "gradnormlorp8bit": (GradNormLoRP8bit, 0.01, 0.25),
}
_DENSE = {
    "adamw": (torch.optim.AdamW, 1e-3, {"foreach": False}),
    "sgd": (torch.optim.SGD, 1e-2, {"momentum": 0.9, "foreach": False}),
    "adafactor": (Adafactor, 1e-3, {}),
    "adam8bit": (AdamW8bit, 1e-3, {}),
    # adapters are attached to the model elsewhere; their trainable parameters get AdamW
    "lora": (torch.optim.AdamW, 1e-3, {"foreach": False}),
    "relora": (torch.optim.AdamW, 1e-3, {"foreach": False}),
    "lowrank": (torch.optim.AdamW, 1e-3, {"foreach": False}),
}
METHODS = tuple(_DENSE) + tuple(_PROJECTED)

# The estimator options (memplan/impls.py records) that model what build_optimizer builds:
# torch's AdamW one tensor at a time, torch's SGD with momentum 0.9, memplan's bundled code otherwise.
_BUILT_AS = {"adamw": {"impl": "torch-forloop"}, "sgd": {"impl": "torch", "momentum": 0.9}}


def built_estimate_options(method: str) -> dict:
    """``memplan.estimate`` options (impl, momentum) for the optimizer ``build_optimizer`` makes."""
    return dict(_BUILT_AS.get(method, {"impl": "bundled"}))


def build_optimizer(model: torch.nn.Module, method: str, *, rank: int = 128, update_gap: int = 200,
                    scale: float | None = None, lr: float | None = None, target_modules=None,
                    layerwise: bool = False, total_steps: int | None = None, **kw: Any):
    """A ready optimizer for ``model`` and an estimator ``method`` name.

    Projected methods split the model with ``projected_param_groups`` (same
    default target modules as the estimator). ``layerwise=True`` wraps it in
    ``LayerwiseOptimizer`` (one optimizer per parameter, stepped in backward).
    ``total_steps`` is passed to GoLore (needed for its GoLore@x% schedule);
    other keywords go to the optimizer class.
    """
    if method in _PROJECTED:
        cls, default_lr, default_scale = _PROJECTED[method]
        params = projected_param_groups(model, rank=rank, update_proj_gap=update_gap,
                                        scale=default_scale if scale is None else scale,
                                        target_modules=target_modules)
        if method == "golore":
            kw.setdefault("total_steps", total_steps)
    elif method in _DENSE:
        cls, default_lr, extra = _DENSE[method]
        kw = {**extra, **kw}
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"Model has no trainable parameters for method {method!r}")
        params = [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}]
    else:
        raise ValueError(f"Unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    kw["lr"] = default_lr if lr is None else lr
    if layerwise:
        return LayerwiseOptimizer(params, cls, **kw)
    return cls(params, **kw)


def optimizer_state_bytes(optimizer) -> dict[str, int]:
    """Bytes held in optimizer state, by category: ``projectors`` (every state
    entry named ``projector``) and ``optimizer_states`` (everything else: moments,
    8-bit codes, absmax, quantization maps, magnitudes, step counters).

    Storages are counted once (shared quantization maps, views), by storage
    identity and ``nbytes``, so this also works on fake tensors.
    """
    out = {"optimizer_states": 0, "projectors": 0}
    seen: set[int] = set()
    for state in optimizer.state.values():
        for key, value in state.items():
            if not torch.is_tensor(value):
                continue
            storage = value.untyped_storage()
            ident = storage._cdata  # the StorageImpl: identical for views and shared tensors
            if ident in seen:
                continue
            seen.add(ident)
            out["projectors" if key == "projector" else "optimizer_states"] += storage.nbytes()
    return out
