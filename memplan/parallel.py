"""Multi-GPU memory: the layouts PyTorch's distributed engine runs, per GPU (worst rank).

    est = memplan.estimate("llama-13b", "adamw", batch_size=4)
    per_gpu = shard(est, "fsdp2", num_gpus=8)   # same API as Estimate
    per_gpu.device_total_bytes, per_gpu.fit("a100-80gb"), per_gpu.engine

Every GPU runs its own micro-batch (`batch_size` is per GPU), so activations are never
divided. Each layout is named after the engine that runs it, and its rules follow that
engine's code (torch 2.13), checked rank by rank against real runs by
`memplan validate --layout L --num-gpus N` (memplan/measure/distributed.py):

- `ddp`: `DistributedDataParallel`. Its reducer keeps gradient buckets covering every
  trainable gradient for the whole run (`gradients`, in every phase). With the default
  `gradient_as_bucket_view=False` the `.grad` tensors come on top; with `bucket_view=True`
  they are views into the buckets, and only a gradient just computed by autograd (before
  the reducer copies it in) is extra.
- `zero1`: the same DDP plus `torch.distributed.optim.ZeroRedundancyOptimizer`. Each rank
  keeps the optimizer state (and projectors) of the whole tensors assigned to it by
  ZeRO's greedy rule: per parameter group, largest tensor first, to the rank holding the
  fewest elements so far (`zero_assignment`). The worst rank is the one whose step is
  largest. A projection method's owner has the whole gradient matrix, so its refresh and
  step transients are those of one whole weight, as on one GPU.
- `fsdp2` / `fsdp2-no-reshard`: `fully_shard` on every transformer block and then on the
  root model (embeddings, final norm and head form the root unit), `reshard_after_forward`
  True / False. Each tensor is cut along dim 0 into ceil(d0 / N)-row chunks; every rank
  stores a padded chunk (rank 0's chunk is the full ceil size, so rank 0 is the worst
  rank): parameters, gradients, and the optimizer state of rank 0's chunk. In flight: the
  root unit is unsharded through the forward (the loss included); the last all-gather's
  flat output is held until the root's forward returns; `reshard_after_forward=True`
  given to the root as well (as torchtitan passes it) reshards the root then, and backward
  starts by all-gathering it again; in backward the next block's all-gather is
  prefetched; a block's unsharded gradients wait for their reduce-scatter; the root's
  gradients wait to the end of backward. With `reshard_after_forward=False` every unsharded parameter stays from
  forward to backward. Those in-flight buffers are counted as `parameters` (unsharded
  parameters) and `temporaries` (all-gather / reduce-scatter buffers, unsharded
  gradients). FSDP2 is modeled for element-wise optimizers (AdamW, SGD) in bf16 / fp32;
  see `check_layout` for what is refused and why.

Aliases: `fsdp`, `zero3`, `full_shard` are `fsdp2`; `zero2`, `shard_grad_op` are
`fsdp2-no-reshard` (FSDP2's documentation maps `reshard_after_forward=False` to ZeRO-2 /
SHARD_GRAD_OP). DeepSpeed's ZeRO-2/3 are not modeled.

The per-layer update (`layerwise=True`) is modeled on one GPU only: GaLore's public
per-layer code steps each parameter from a backward hook on the local gradient, before any
all-reduce, and its README says it is for single-GPU training. Multi-GPU runs add
`COMM_BUFFER_BYTES` of NCCL buffers per GPU to the overhead (not validated: gloo on the CPU
allocates none of PyTorch's tensors for it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from functools import lru_cache

from memplan.errors import MemplanError, unknown
from memplan.estimator import PRECISIONS, Estimate, _sequence_temps
from memplan.inventory import _inventory, inventory, resolve_targets
from memplan.methods import Shape, get_method
from memplan.phases import compose
from memplan.reserve import fragmentation_bytes, outside_tensors
from memplan.profiles import ModelProfile
from memplan.quant import QMAP_BYTES, quantized
from memplan.units import MiB

LAYOUTS = ("single", "ddp", "zero1", "fsdp2-no-reshard", "fsdp2")  # least to most sharded
ENGINES = {
    "single": "one GPU",
    "ddp": "DDP",
    "zero1": "DDP + ZeroRedundancyOptimizer",
    "fsdp2-no-reshard": "FSDP2, keep parameters after forward",
    "fsdp2": "FSDP2, reshard after forward",
}
LAYOUT_NAMES = {
    "single": "single GPU",
    "ddp": "DDP (replica per GPU)",
    "zero1": "DDP + ZeroRedundancyOptimizer (states sharded)",
    "fsdp2-no-reshard": "FSDP2, keep parameters after forward (ZeRO-2-like)",
    "fsdp2": "FSDP2, reshard after forward (ZeRO-3 / full shard)",
}
ALIASES = {"fsdp": "fsdp2", "zero3": "fsdp2", "full_shard": "fsdp2", "zero2": "fsdp2-no-reshard",
           "shard_grad_op": "fsdp2-no-reshard", "none": "single"}
FSDP2_METHODS = ("adamw", "sgd")  # element-wise state: a dim-0 chunk's state is the state of the chunk

# NCCL communicator buffers and streams per GPU (an estimate: NCCL_BUFFSIZE is 4 MiB
# per channel and peer; observed totals are a few hundred MiB).
COMM_BUFFER_BYTES = 256 * MiB

_BLOCK = re.compile(r"^(.*?\.(?:layers|layer|h)\.\d+)\.")


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "").replace("_", "")


def resolve_layout(layout: str) -> str:
    table = {_key(k): v for k, v in ALIASES.items()} | {_key(k): k for k in LAYOUTS}
    key = table.get(_key(layout))
    if key is None:
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
    """An Estimate per GPU (the worst rank) under a multi-GPU layout (same API as Estimate)."""

    layout: str = "single"
    num_gpus: int = 1
    rank: int = 0  # the worst rank, whose numbers these are
    bucket_view: bool = False

    @property
    def engine(self) -> str:
        view = ", gradient_as_bucket_view" if self.bucket_view and self.layout in ("ddp", "zero1") else ""
        return ENGINES[self.layout] + view

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(layout=self.layout, engine=self.engine, num_gpus=self.num_gpus, worst_rank=self.rank,
                   bucket_view=self.bucket_view, per_gpu=True)
        return out


def check_layout(layout: str, num_gpus: int, layerwise: bool, method: str | None = None,
                 precision: str | None = None, offload: str = "none") -> str:
    key = resolve_layout(layout)
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise MemplanError(f"Number of GPUs must be a positive integer, got {num_gpus!r}.")
    if key == "single" and num_gpus != 1:
        raise MemplanError(f"Layout 'single' is one GPU, got num_gpus={num_gpus}. "
                           f"Use {', '.join(LAYOUTS[1:])} for more GPUs.")
    if layerwise and key != "single":
        raise MemplanError(f"The per-layer update (--layerwise) is single-GPU only (as in GaLore's public code); "
                           f"layout '{key}' with {num_gpus} GPU(s) is not modeled. "
                           "Use --no-layerwise for multi-GPU layouts.")
    if offload != "none" and key != "single":
        raise MemplanError(f"CPU offload (--offload {offload}) is modeled on one GPU only (torchao's CPUOffloadOptimizer "
                           f"in one process); layout '{key}' with {num_gpus} GPU(s) is not modeled. "
                           "Use --offload none for multi-GPU layouts, or --layout single.")
    if method is not None and key != "single":
        m = get_method(method)
        if m.adapter and key != "ddp":
            raise MemplanError(f"Adapter method '{m.name}' under '{key}' is not modeled (only ddp); use --layout ddp.")
        if key.startswith("fsdp2") and m.name not in FSDP2_METHODS:
            why = ("its optimizer gets DTensor gradient shards, and DTensor redistributes them (the full gradient "
                   "for the SVD / QR) in ways memplan does not model" if m.uses_rank
                   else "its state is not element-wise, so a dim-0 shard's state is not modeled")
            raise MemplanError(f"Method '{m.name}' under FSDP2 is not modeled: {why}. "
                               f"Use --layout zero1 (whole tensors per rank) or ddp.")
        if key.startswith("fsdp2") and precision == "mixed":
            raise MemplanError("FSDP2 with --precision mixed (MixedPrecisionPolicy) is not modeled yet; "
                               "use --precision bf16 or fp32.")
    return key


# ----------------------------------------------------------------------------- tensors
@dataclass(frozen=True)
class _T:
    name: str
    shape: Shape
    d0: int
    numel: int
    unit: str  # the FSDP2 unit: a block's name, or "root"


@lru_cache(maxsize=256)
def _trainable(model: ModelProfile, targets: tuple[str, ...]) -> tuple[_T, ...]:
    out = []
    for s in _inventory(model, targets):
        m, n = (s.shape[0], s.shape[1]) if len(s.shape) == 2 else (s.numel, 1)
        b = _BLOCK.match(s.name)
        out.append(_T(s.name, Shape(m, n, s.projected), s.shape[0], s.numel, b.group(1) if b else "root"))
    return tuple(out)


def zero_assignment(sizes_by_group: list[list[int]], n: int) -> list[list[list[int]]]:
    """ZeroRedundancyOptimizer's partition: for each group, indices (into the group) per rank.

    Per parameter group (in order), the tensors sorted by size, largest first (a stable
    sort), each to the rank with the fewest elements so far (the lowest rank on ties);
    the running sizes carry over from one group to the next (torch 2.13,
    `ZeroRedundancyOptimizer._partition_parameters`).
    """
    sizes = [0] * n
    out = []
    for group in sizes_by_group:
        per_rank: list[list[int]] = [[] for _ in range(n)]
        for i in sorted(range(len(group)), key=lambda i: group[i], reverse=True):
            r = sizes.index(min(sizes))
            per_rank[r].append(i)
            sizes[r] += group[i]
        out.append(per_rank)
    return out


def _impl(c):
    from memplan.impls import get_impl, knobs
    impl = get_impl(get_method(c.method).name, c.impl)
    return impl, knobs(impl, c.momentum, c.beta1)


def _rank_terms(est: Estimate, tensors: list[Shape]):
    """The estimate's step terms with the optimizer state and step of `tensors` only."""
    c, t = est.config, est.terms
    method = get_method(c.method)
    impl, kn = _impl(c)
    r = c.rank if method.uses_rank else 0
    s = PRECISIONS[c.precision].grad
    states = projs = step = 0
    refresh = None if t.refresh_temp is None else 0
    q = False
    for shape in tensors:
        st, pj = impl.state(shape, r, s, kn)
        states, projs = states + st, projs + pj
        step = max(step, impl.step_temp(shape, r, s, kn))
        if refresh is not None and shape.projected:
            refresh = max(refresh, impl.refresh_temp(shape, r, s, kn))
        q = q or (method.eightbit and quantized(r * shape.K if shape.projected else shape.numel))
    order = tuple((shape, False) for shape in tensors)  # the order the rank's optimizer steps them
    seq_step, seq_refresh = _sequence_temps(impl, order, r, s, kn)
    if impl.sequence_temp:  # whole-step transients (foreach buffers, a for-loop's kept locals) over the rank's tensors
        step = seq_step
    if impl.sequence_refresh and refresh is not None:
        refresh = seq_refresh
    return replace(t, optimizer_states=states + (QMAP_BYTES if q else 0), projectors=projs, step_temp=step,
                   refresh_temp=refresh)


# ----------------------------------------------------------------------------- layouts
def _ddp(est: Estimate, terms, grads_total: int, bucket_view: bool) -> dict:
    """DDP's phases from the step terms: the buckets on top of every phase."""
    phases = compose(terms, est.acts)
    if bucket_view:  # the .grad tensors are views into the buckets; one just computed by autograd is extra
        from dataclasses import replace as _r
        phases = {**phases, "backward": compose(_r(terms, gradients=0), est.acts)["backward"]}
        out = {n: dict(p) for n, p in phases.items()}
        for n in ("forward", "backward"):
            out[n]["gradients"] += grads_total
        return out
    return {n: {**p, "gradients": p["gradients"] + grads_total} for n, p in phases.items()}


def _zero1_ranks(est: Estimate, n: int) -> list:
    c = est.config
    method = get_method(c.method)
    ts = [t for t in _trainable(c.model, resolve_targets(c.model, c.target_modules))]
    groups = ([[t for t in ts if t.shape.projected], [t for t in ts if not t.shape.projected]]
              if method.uses_rank else [ts])
    groups = [g for g in groups if g]
    assign = zero_assignment([[t.numel for t in g] for g in groups], n)
    ranks = []
    for r in range(n):
        mine = [g[i] for g, per_rank in zip(groups, assign) for i in per_rank[r]]
        ranks.append(_rank_terms(est, [t.shape for t in mine]))
    return ranks


def _fsdp2_phases(est: Estimate, n: int, reshard: bool) -> dict:
    c, t, a = est.config, est.terms, est.acts
    prec = PRECISIONS[c.precision]
    impl, kn = _impl(c)
    ts = _trainable(c.model, resolve_targets(c.model, c.target_modules))
    p_shard = g_shard = states = step = 0
    root_full = all_full = root_grad = root_g_shard = 0
    blocks: dict[str, int] = {}
    chunks: list[Shape] = []
    first_block = None
    for x in ts:
        rows = _div(x.d0, n)
        rest = x.numel // x.d0
        chunk = Shape(rows, rest, x.shape.projected) if x.shape.n > 1 else Shape(rows, 1, False)
        p_shard += rows * rest * prec.param
        g_shard += rows * rest * prec.grad
        chunks.append(chunk)
        st, _ = impl.state(chunk, 0, prec.grad, kn)
        states += st
        step = max(step, impl.step_temp(chunk, 0, prec.grad, kn))
        full = n * rows * rest * prec.param  # the all-gather output: every rank's padded chunk
        all_full += full
        if x.unit == "root":
            root_full += full
            root_grad += n * rows * rest * prec.grad
            root_g_shard += rows * rest * prec.grad
        else:
            blocks[x.unit] = blocks.get(x.unit, 0) + full
            first_block = first_block or x.unit
    block = max(blocks.values()) if blocks else 0
    if impl.sequence_temp:  # over rank 0's chunks, in the model's order (the optimizer's)
        step = _sequence_temps(impl, tuple((c, False) for c in chunks), 0, prec.grad, kn)[0]
    held = root_full if reshard else all_full  # unsharded parameters from forward to backward
    tf = replace(t, parameters=p_shard + held, gradients=g_shard, optimizer_states=states, projectors=0,
                 step_temp=step)
    fwd = dict(compose(tf, a)["forward"])
    fwd["temporaries"] += block  # the last all-gather's output, freed when the root's forward returns
    # the first block's all-gather: the root's all-gather output is held until then (deferred free)
    first = blocks.get(first_block, 0)
    gather = {"parameters": p_shard + root_full + first, "gradients": 0, "optimizer_states": states, "projectors": 0,
              "activations": a.inputs, "temporaries": root_full + first}
    fwd = max((fwd, gather), key=lambda p: sum(p.values()))
    # start of backward: the loss's and the head's backward; the head's gradient is unsharded
    start = dict(compose(replace(tf, gradients=0), a)["backward"])
    start["temporaries"] += start["gradients"] + (block if reshard else 0)  # + the last block's prefetch
    start["gradients"] = 0
    saved = a.saved(c.checkpointing)
    after_loss = saved - a.loss_saved
    # reshard_after_forward=True given to the root too: the root is resharded when its forward returns
    # and all-gathered again as backward starts (its flat all-gather output and the copy-out target
    # together, before the last block's prefetch), while everything saved is alive
    regather = {"parameters": p_shard + root_full, "gradients": 0, "optimizer_states": states, "projectors": 0,
                "activations": saved, "temporaries": root_full}
    # the last block's backward: its parameters unsharded, the next one's prefetched (if any), its
    # unsharded gradients, the head's unsharded gradient (the root reduce-scatters at the end); the
    # block's own activations are kept in full (an upper bound on the moment its gradients complete,
    # which also covers the attention backward's transients: measured within 1% on llama-7b/13b)
    mid = {"parameters": p_shard + (root_full + block if reshard else all_full), "gradients": 0,
           "optimizer_states": states, "projectors": 0, "activations": after_loss,
           "temporaries": t.first_gradient + block * prec.grad // prec.param + (block if reshard and len(blocks) > 1 else 0)}
    # the end of backward, before the root's reduce-scatter: the root still unsharded with its unsharded
    # gradients, the blocks' sharded gradients, and the first block's reduce-scatter input (freed at the next)
    end = {"parameters": p_shard + root_full, "gradients": g_shard - root_g_shard, "optimizer_states": states,
           "projectors": 0, "activations": a.inputs, "temporaries": root_grad + first * prec.grad // prec.param}
    bwd = max((start, mid, end) + ((regather,) if reshard else ()), key=lambda p: sum(p.values()))
    rest_phases = compose(replace(tf, parameters=p_shard), a)
    return {"forward": fwd, "backward": bwd, "optimizer_step": rest_phases["optimizer_step"],
            "refresh_step": rest_phases["refresh_step"]}


def _total(phases: dict) -> int:
    return max(sum(ph.values()) for ph in phases.values())


def shard(est: Estimate, layout: str = "single", num_gpus: int = 1, *, bucket_view: bool = False) -> ShardedEstimate:
    """The per-GPU memory of `est` trained with `layout` on `num_gpus` GPUs, worst rank (see module doc)."""
    c = est.config
    key = check_layout(layout, num_gpus, c.layerwise, c.method, c.precision, c.offload)
    grads_total = est.terms.gradients if est.terms is not None else max(p["gradients"] for p in est.phases.values())
    worst = 0
    if key == "single":
        phases = est.phases
    elif key == "ddp":
        phases = _ddp(est, est.terms, grads_total, bucket_view)
    elif key == "zero1":
        options = [_ddp(est, terms, grads_total, bucket_view) for terms in _zero1_ranks(est, num_gpus)]
        worst = max(range(num_gpus), key=lambda r: (_total(options[r]), -r))
        phases = options[worst]
    else:
        phases = _fsdp2_phases(est, num_gpus, reshard=key == "fsdp2")
    ckpt = est.overhead - outside_tensors(est.gpu) - fragmentation_bytes(est.phases)  # its checkpointing term
    overhead = (outside_tensors(est.gpu) + fragmentation_bytes(phases) + ckpt
                + (COMM_BUFFER_BYTES if key != "single" else 0))
    base = {f.name: getattr(est, f.name) for f in fields(Estimate) if f.init}
    return ShardedEstimate(**{**base, "phases": phases, "overhead": overhead}, layout=key, num_gpus=num_gpus,
                           rank=worst, bucket_view=bucket_view and key in ("ddp", "zero1"))
