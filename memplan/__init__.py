"""memplan: memory planning for memory-efficient LLM training.

The estimator is pure Python: `import memplan` never imports torch.

The names below are imported on first use (PEP 562), so that `import memplan`
and the CLI start fast; `from memplan import estimate` works as usual.
"""
from memplan.errors import MemplanError
# eager: the submodule memplan.inventory would otherwise shadow the function inventory
from memplan.inventory import DEFAULT_TARGET_MODULES, TensorSpec, inventory, parameter_count

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "memplan.categories": ("CATEGORIES", "PHASES"),
    "memplan.estimator": ("PRECISIONS", "Estimate", "Fit", "TrainingConfig", "estimate",
                          "estimate_config"),
    "memplan.methods": ("METHODS",),
    "memplan.planner": ("plan", "max_batch_size", "max_seq_len", "max_rank", "compare", "sweep"),
    "memplan.advisor": ("advise",),
    "memplan.profiles": ("GPUProfile", "ModelProfile", "load_gpu", "load_gpus", "load_model", "model_names"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = [
    "CATEGORIES", "PHASES", "PRECISIONS", "METHODS", "DEFAULT_TARGET_MODULES",
    "Estimate", "Fit", "TrainingConfig", "TensorSpec", "ModelProfile", "GPUProfile", "MemplanError",
    "estimate", "estimate_config", "inventory", "parameter_count", "load_model", "load_gpu", "load_gpus",
    "model_names", "plan", "max_batch_size", "max_seq_len", "max_rank", "compare", "sweep", "advise",
]


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'memplan' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value  # next time: a plain module attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
