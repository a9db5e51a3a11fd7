"""memplan: memory planning for memory-efficient LLM training.

The estimator is pure Python: `import memplan` never imports torch.
"""
from memplan.errors import MemplanError
from memplan.estimator import (
    CATEGORIES,
    PHASES,
    PRECISIONS,
    Estimate,
    Fit,
    TrainingConfig,
    estimate,
    estimate_config,
)
from memplan.inventory import DEFAULT_TARGET_MODULES, TensorSpec, inventory, parameter_count
from memplan.methods import METHODS
from memplan.planner import plan, max_batch_size, max_seq_len, max_rank, compare, sweep
from memplan.advisor import advise
from memplan.profiles import GPUProfile, ModelProfile, load_gpu, load_gpus, load_model, model_names

__version__ = "0.1.0"

__all__ = [
    "CATEGORIES", "PHASES", "PRECISIONS", "METHODS", "DEFAULT_TARGET_MODULES",
    "Estimate", "Fit", "TrainingConfig", "TensorSpec", "ModelProfile", "GPUProfile", "MemplanError",
    "estimate", "estimate_config", "inventory", "parameter_count", "load_model", "load_gpu", "load_gpus",
    "model_names", "plan", "max_batch_size", "max_seq_len", "max_rank", "compare", "sweep", "advise",
]
