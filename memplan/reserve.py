"""The device total: what the caching allocator reserves beyond the allocated peak, and
the memory a CUDA process holds outside it.

    device total = allocated peak + cuBLAS workspaces + fragmentation + CUDA context
                   (the first three terms: the predicted max_memory_reserved)

PyTorch's CUDA caching allocator (modelled exactly in ``memplan.allocator``) reserves
whole segments and keeps freed blocks cached, so ``max_memory_reserved`` exceeds
``max_memory_allocated``. The analytic estimate has no allocation sequence to replay, so
the excess comes from a rule fitted to replays (``benchmarks/fragmentation_fit.py``):

- ``GRADIENT_SHARE`` of the gradient bytes: gradients are made during the backward in
  sizes that the activation blocks freed around them rarely fit, so they open new
  segments, and the cached activation segments stay reserved through the optimizer step;
- ``ACTIVATION_SHARE`` of the saved activations: segment rounding and the
  partly used 20 MiB segments of the many 1-10 MiB activation tensors;
- ``CHECKPOINT_BLOCKS`` recomputed blocks with activation checkpointing: the
  recomputation allocates a block's activations again during the backward, amid gradients;
- ``LAYERWISE_SHARE`` of all gradient bytes with the per-layer update: each gradient is
  made and freed (with its step's transients) among the activations being released.

The fit's data and its residual per point are in
``benchmarks/results/fragmentation_fit.json`` (replays of the validation grid's
FakeTensorMode steps and of the real CUDA runs' steps, and the real H200 numbers).

The cuBLAS workspaces (allocated through the caching allocator, so they are in
max_memory_allocated but not among the tensors the estimator counts) and the CUDA context
(driver context, lazily loaded kernels, library handles) are per GPU profile
(``cublas_workspace_kib``, ``cuda_context_mib`` in profiles/gpus.toml, each with its source);
without a GPU the defaults below are used.
"""
from __future__ import annotations

from memplan.units import MiB

GRADIENT_SHARE = 0.27
ACTIVATION_SHARE = 0.04
CHECKPOINT_BLOCKS = 4.0
LAYERWISE_SHARE = 0.05
DEFAULT_CONTEXT_BYTES = 530 * MiB  # profiles/gpus.toml: families not measured (source there)
DEFAULT_WORKSPACE_BYTES = 16640 * 1024  # two 8,519,680 B cuBLAS workspaces (profiles/gpus.toml, pre-Hopper)
_NO_GPU_OUTSIDE = DEFAULT_CONTEXT_BYTES + DEFAULT_WORKSPACE_BYTES  # outside_tensors(None)


def fragmentation_bytes(phases: dict, checkpoint_block: int = 0, layerwise_gradients: int = 0,
                        gradients: int | None = None) -> int:
    """Reserved minus allocated at the peak, predicted from the step's phases ({phase: {category:
    bytes}}), with checkpointing the activation bytes of one recomputed block, and with the
    per-layer update the bytes of all gradients (made and freed one at a time). ``gradients``:
    the most gradient bytes alive at once, when not the phases' most (the per-layer update's)."""
    grads = max(p.get("gradients", 0) for p in phases.values())
    if gradients is not None:
        grads = max(grads, gradients)
    return fragmentation(grads, phases["forward"].get("activations", 0), checkpoint_block, layerwise_gradients)


def fragmentation(gradients: int, activations: int, checkpoint_block: int = 0, layerwise_gradients: int = 0) -> int:
    """The rule itself: from the most gradient bytes alive at once and the saved activations."""
    return int(GRADIENT_SHARE * gradients + ACTIVATION_SHARE * activations + CHECKPOINT_BLOCKS * checkpoint_block
               + LAYERWISE_SHARE * layerwise_gradients)


def context_bytes(gpu=None) -> int:
    """Device memory outside the caching allocator on ``gpu`` (a GPUProfile or None)."""
    mib = getattr(gpu, "cuda_context_mib", None)
    return mib * MiB if mib else DEFAULT_CONTEXT_BYTES


def workspace_bytes(gpu=None) -> int:
    """cuBLAS workspaces a training step allocates through the caching allocator on ``gpu``."""
    kib = getattr(gpu, "cublas_workspace_kib", None)
    return kib * 1024 if kib else DEFAULT_WORKSPACE_BYTES


def outside_tensors(gpu=None) -> int:
    """What the device total adds besides the tensors and fragmentation: workspaces + context. Kept in
    the profile (a name with '_': not pickled): an estimate asks for it every time, and a table lookup
    would hash the profile each time."""
    if gpu is None:
        return _NO_GPU_OUTSIDE
    try:
        return gpu.__dict__["_outside_tensors"]
    except KeyError:
        out = gpu.__dict__["_outside_tensors"] = context_bytes(gpu) + workspace_bytes(gpu)
        return out
