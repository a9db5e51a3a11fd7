"""Multi-GPU memory: data-parallel layouts applied to an estimate's phases.

    est = memplan.estimate("llama-13b", "galore8bit", batch_size=4)
    per_gpu = shard(est, "zero2", num_gpus=4)   # same API as Estimate
    per_gpu.device_total_bytes, per_gpu.fit("a100-40gb")

Every GPU runs its own micro-batch (`batch_size` is per GPU), so activations are
never divided. The layouts, from least to most sharded (`LAYOUTS`):

- `single`: one GPU; the estimate as it is.
- `ddp`: a full replica on every GPU, plus DDP's gradient buckets. With the default
  `gradient_as_bucket_view=False`, the reducer allocates bucket buffers covering
  every trainable gradient when the model is wrapped and keeps them for the whole
  run, so each GPU holds one more gradient-sized buffer in every phase (counted in
  `gradients`). `bucket_view=True` models `gradient_as_bucket_view=True`, where the
  gradients are views into the buckets and nothing extra is held.
- `zero1`: optimizer states and projectors (they are optimizer state) / N.
- `zero2`: also gradients / N, plus (in backward) the full gradient of the largest
  unit while it waits to be reduce-scattered.
- `zero3` (= FSDP full shard): also parameters / N, plus (in forward and backward)
  the all-gathered parameters of the largest unit: `UNITS_IN_FLIGHT` of them. The
  optimizer step runs on the shards, with nothing gathered.

A *unit* is what FSDP wraps and gathers at once: one transformer block, and every
other top-level module (embedding, final norm, head) on its own, as torchtitan's
per-module wrapping does (`sharding_units`). Units are counted from the model's
own parameters; for `lowrank`, whose factors replace the full weights, that
overcounts the gathered unit (a conservative error).

Assumptions, stated once:
- Sharding is by whole tensors, balanced by size (the way
  `torch.distributed.optim.ZeroRedundancyOptimizer` assigns parameters to ranks),
  so a projection method's owner has the whole gradient matrix for its SVD / QR and
  the refresh and step transients of one whole weight stay as in the estimate.
  Shares are ceil(total / N); a greedy assignment can leave one rank up to one
  tensor's share above that.
- The per-layer update (`layerwise=True`) is modeled on one GPU only (layout
  `single`). GaLore's public per-layer code steps each parameter from a backward
  hook on the local gradient, before DDP's all-reduce or ZeRO's reduce-scatter has
  produced the averaged one, and its README says the technique is only supported for
  single-GPU training. Any other layout with `layerwise=True` raises `MemplanError`.
- Multi-GPU runs add `COMM_BUFFER_BYTES` of NCCL buffers per GPU to the overhead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import lru_cache

from memplan.errors import MemplanError, unknown
from memplan.estimator import PRECISIONS, Estimate
from memplan.reserve import fragmentation_bytes, outside_tensors
from memplan.inventory import inventory, resolve_targets
from memplan.profiles import ModelProfile
from memplan.units import MiB

LAYOUTS = ("single", "ddp", "zero1", "zero2", "zero3")  # least to most sharded
LAYOUT_NAMES = {
    "single": "single GPU",
    "ddp": "DDP (replica per GPU)",
    "zero1": "ZeRO-1 (states sharded)",
    "zero2": "ZeRO-2 (states + grads sharded)",
    "zero3": "ZeRO-3 / FSDP (states + grads + params sharded)",
}
ALIASES = {"fsdp": "zero3", "full_shard": "zero3", "shard_grad_op": "zero2", "none": "single"}

# FSDP gathers the unit it computes and prefetches the next one (BACKWARD_PRE and
# limit_all_gathers allow two all-gathers in flight), so two units can be alive.
UNITS_IN_FLIGHT = 2
# NCCL communicator buffers and streams per GPU (an estimate: NCCL_BUFFSIZE is 4 MiB
# per channel and peer; observed totals are a few hundred MiB).
COMM_BUFFER_BYTES = 256 * MiB

_BLOCK = re.compile(r"^(.*?\.(?:layers|layer|h)\.\d+)\.")


def resolve_layout(layout: str) -> str:
    key = str(layout).strip().lower().replace("-", "").replace("_", "")
    key = {k.replace("_", ""): v for k, v in ALIASES.items()}.get(key, key)
    if key not in LAYOUTS:
        raise unknown("layout", str(layout), LAYOUTS + tuple(ALIASES), "memplan plan --help")
    return key


@lru_cache(maxsize=256)
def sharding_units(model: ModelProfile, targets: tuple[str, ...]) -> dict[str, int]:
    """{unit name: number of parameter elements}: blocks, and other modules on their own."""
    units: dict[str, int] = {}
    for s in inventory(model, targets):
        m = _BLOCK.match(s.name)
        key = m.group(1) if m else s.name.rsplit(".", 1)[0]
        units[key] = units.get(key, 0) + s.numel
    return units


def largest_unit_numel(model: ModelProfile, targets=None) -> int:
    return max(sharding_units(model, resolve_targets(model, targets)).values())


def _div(n: int, k: int) -> int:
    return -(-n // k)


@dataclass(frozen=True)
class ShardedEstimate(Estimate):
    """An Estimate per GPU under a data-parallel layout (same API as Estimate)."""

    layout: str = "single"
    num_gpus: int = 1
    unit_bytes: int = 0  # parameter bytes of the largest sharding unit (zero2 / zero3 terms)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(layout=self.layout, num_gpus=self.num_gpus, per_gpu=True)
        return out


def check_layout(layout: str, num_gpus: int, layerwise: bool) -> str:
    key = resolve_layout(layout)
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise MemplanError(f"Number of GPUs must be a positive integer, got {num_gpus!r}.")
    if key == "single" and num_gpus != 1:
        raise MemplanError(f"Layout 'single' is one GPU, got num_gpus={num_gpus}. "
                           "Use ddp, zero1, zero2 or zero3 for more GPUs.")
    if layerwise and key != "single":
        raise MemplanError(f"The per-layer update (--layerwise) is single-GPU only (as in GaLore's public code); "
                           f"layout '{key}' with {num_gpus} GPU(s) is not modeled. "
                           "Use --no-layerwise for multi-GPU layouts.")
    return key


def shard_phase(phase: dict[str, int], layout: str, n: int, grads_total: int, unit_param: int,
                unit_grad: int, bucket_view: bool = False, in_pass: bool = True,
                sharded_temp: bool = False) -> dict[str, int]:
    """One phase's categories per GPU. `grads_total`: all trainable gradient bytes.

    `in_pass`: the phase is in the forward or backward pass, where units are gathered and
    gradients wait for their reduce-scatter; the optimizer step runs on shards only.
    """
    p = dict(phase)
    unit_param, unit_grad = (unit_param, unit_grad) if in_pass else (0, 0)
    if layout == "single":
        return p
    if layout == "ddp":
        if not bucket_view:
            p["gradients"] += grads_total  # persistent bucket buffers, one gradient-sized copy
        return p
    p["optimizer_states"] = _div(p["optimizer_states"], n)
    p["projectors"] = _div(p["projectors"], n)
    if sharded_temp and not in_pass:  # a foreach step over the local shards: its buffers shrink with them
        p["temporaries"] = _div(p["temporaries"], n)
    if layout in ("zero2", "zero3") and p["gradients"]:
        # own shard + one unit's full gradient waiting for its reduce-scatter (never more than unsharded)
        p["gradients"] = min(p["gradients"], _div(p["gradients"], n) + unit_grad)
    if layout == "zero3":
        p["parameters"] = min(p["parameters"], _div(p["parameters"], n) + UNITS_IN_FLIGHT * unit_param)
    return p


def shard(est: Estimate, layout: str = "single", num_gpus: int = 1, *, bucket_view: bool = False) -> ShardedEstimate:
    """The per-GPU memory of `est` trained with `layout` on `num_gpus` GPUs (see module doc)."""
    c = est.config
    key = check_layout(layout, num_gpus, c.layerwise)
    prec = PRECISIONS[c.precision]
    unit = largest_unit_numel(c.model, c.target_modules)
    unit_param, unit_grad = unit * prec.param, unit * prec.grad
    grads_total = max(ph["gradients"] for ph in est.phases.values())  # end of backward: every gradient
    phases = {name: shard_phase(ph, key, num_gpus, grads_total, unit_param, unit_grad, bucket_view,
                                in_pass=name in ("forward", "backward"), sharded_temp=est.sharded_step_temp)
              for name, ph in est.phases.items()}
    ckpt = est.overhead - outside_tensors(est.gpu) - fragmentation_bytes(est.phases)  # its checkpointing term
    overhead = (outside_tensors(est.gpu) + fragmentation_bytes(phases) + ckpt
                + (COMM_BUFFER_BYTES if key != "single" else 0))
    base = {f.name: getattr(est, f.name) for f in fields(Estimate) if f.init}
    return ShardedEstimate(**{**base, "phases": phases, "overhead": overhead}, layout=key, num_gpus=num_gpus,
                           unit_bytes=unit_param)
