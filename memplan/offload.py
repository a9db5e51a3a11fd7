"""--offload: optimizer state (and gradients) in host memory, as torchao's CPUOffloadOptimizer keeps them.

torchao 0.18 `torchao.optim.CPUOffloadOptimizer(params, optimizer_class, offload_gradients=...)`,
read from its source (it asserts a CUDA or XPU device, so it does not run here):
- every trainable tensor of at least `minimal_size` (4096) elements gets a pinned host copy of
  the weight and a pinned host gradient buffer, and its own `optimizer_class` instance over the
  host copy: its state lives in host memory and its step runs on the CPU (AdamW with
  `fused=True`, torchao's default, allocates no temporaries). Smaller tensors stay on the GPU
  with one device optimizer.
- the device keeps the weights. A post-accumulate-grad hook copies each gradient to the host
  as soon as it is complete; with `offload_gradients=True` it then drops the device gradient,
  so at most about one gradient is on the device at a time (like the per-layer update), and
  gradient accumulation is not possible.
- after the CPU step each weight is copied back into the device weight in place.

Host figure: the pinned weight and gradient copies plus the optimizer state, per offloaded tensor.
"""
from __future__ import annotations

from memplan.errors import MemplanError

OFFLOADS = ("none", "optimizer", "optimizer+gradients")
MINIMAL_SIZE = 4096  # torchao's minimal_size: smaller tensors stay on the device
OFFLOADABLE = ("adamw", "sgd", "adafactor", "lora")  # methods whose optimizer is one torch optimizer per tensor
LIBRARY = "torchao 0.18 CPUOffloadOptimizer"


def check(offload: str, method: str) -> None:
    if offload not in OFFLOADS:
        from memplan.errors import unknown

        raise unknown("offload", str(offload), OFFLOADS, "memplan estimate --help")
    if offload != "none" and method not in OFFLOADABLE:
        raise MemplanError(f"--offload {offload} models {LIBRARY} around one torch optimizer per tensor: methods "
                           f"{', '.join(OFFLOADABLE)}; '{method}' keeps projection state that it does not offload. "
                           "Use --offload none.")


def offloaded(offload: str, numel: int) -> bool:
    """True when this trainable tensor's state (and gradient) go to the host."""
    return offload != "none" and numel >= MINIMAL_SIZE


def host_bytes(numel: int, param_bytes: int, grad_bytes: int, state_bytes: int) -> tuple[int, int]:
    """(host bytes, of which pinned) for one offloaded tensor: pinned weight and gradient copies + state."""
    pinned = numel * param_bytes + numel * grad_bytes
    return pinned + state_bytes, pinned
