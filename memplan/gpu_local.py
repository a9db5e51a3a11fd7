"""`--gpu local`: this machine's NVIDIA GPUs, read through NVML (nvidia-ml-py).

Optional: nvidia-ml-py is the `memplan[nvml]` extra and is imported only here, inside
the functions. No module, no driver or no GPU becomes a `MemplanError` that says so.

The profile's memory is NVML's framebuffer total (what nvidia-smi shows). CUDA can
allocate somewhat less than that; the planner takes its usual margin off
(`memplan.estimator.capacity_bytes`). Memory other processes hold right now is not
subtracted: it is reported in `memory_source` so a user can see it.
"""
from __future__ import annotations

from memplan.errors import MemplanError
from memplan.profiles import GPUProfile
from memplan.units import MiB


def _nvml():
    try:
        import pynvml
    except ImportError:
        raise MemplanError("nvidia-ml-py is not installed: pip install 'memplan[nvml]' "
                           "(or give a GPU profile id, see 'memplan gpus').") from None
    return pynvml


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def local_gpus() -> list[GPUProfile]:
    """One GPUProfile per NVIDIA GPU of this machine, ids 'local:0', 'local:1', ..."""
    nv = _nvml()
    try:
        nv.nvmlInit()
    except nv.NVMLError as e:
        raise MemplanError(f"No NVIDIA GPU or driver found (NVML: {e}). "
                           "Give a GPU profile id instead, see 'memplan gpus'.") from None
    try:
        gpus = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            name = _text(nv.nvmlDeviceGetName(h))
            try:
                driver = _text(nv.nvmlSystemGetDriverVersion())
            except nv.NVMLError:
                driver = "unknown"
            gpus.append(GPUProfile(
                id=f"local:{i}", name=name, memory_mib=int(mem.total) // MiB,
                memory_source=(f"NVML nvmlDeviceGetMemoryInfo total on this machine (driver {driver}); "
                               f"{int(mem.used) // MiB} MiB were in use when read"),
            ))
    except nv.NVMLError as e:
        raise MemplanError(f"No NVIDIA GPU or driver found (NVML: {e}).") from None
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass
    if not gpus:
        raise MemplanError("No NVIDIA GPU found (NVML sees 0 devices). Give a GPU profile id, see 'memplan gpus'.")
    return gpus


def local_gpu(index: int = 0) -> GPUProfile:
    gpus = local_gpus()
    if not 0 <= index < len(gpus):
        raise MemplanError(f"No local GPU {index}: this machine has {len(gpus)} "
                           f"(use local:0 to local:{len(gpus) - 1}).")
    return gpus[index]
