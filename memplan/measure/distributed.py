"""Measure training steps under PyTorch's distributed engine, rank by rank.

    cfg = DistConfig(model="llama-60m", method="adamw", layout="zero1", num_gpus=4, device="cpu")
    ranks = measure_dist(cfg)            # [{phases, persistent}, ...] one per rank

The engines, as users run them (``memplan.parallel`` models the same):

- ``ddp``: ``DistributedDataParallel`` (``gradient_as_bucket_view`` from ``bucket_view``);
- ``zero1``: the same DDP plus ``ZeroRedundancyOptimizer`` around the bundled optimizer;
- ``fsdp2`` / ``fsdp2-no-reshard``: ``fully_shard`` on every block and then on the root
  model, ``reshard_after_forward`` True / False, with ``MixedPrecisionPolicy`` (bf16 compute,
  fp32 sharded parameters and reduction) for ``--precision mixed``.

``device="cpu"`` spawns one process per rank with the gloo backend (real tensors, real
collectives; FSDP2's collectives are held to NCCL's memory behaviour by ``_settled``: gloo's
own copies are left out, and its worker thread's references are let go before the call
returns). ``device="fake"`` runs one rank in this process under ``FakeTensorMode`` with
PyTorch's fake process group (``torch.testing._internal.distributed.fake_pg``): FSDP2 only
(DDP's C++ reducer cannot wrap fake tensors). The device mesh is built before the fake mode
is entered and passed to every ``fully_shard``. Rank 0 holds the largest FSDP2 shards (dim-0
chunks are ceil-sized from the first rank on), so it is the worst rank there.

Memory is tracked from before the model is wrapped (DDP's buckets are allocated by the
wrapper) by one ``ResizeTracker`` for the whole run: memplan's tracker plus what PyTorch's
``MemTracker`` also does, following ``UntypedStorage.resize_`` (FSDP2 frees and re-allocates
its unsharded parameters by resizing their storages). Categories: DDP's buckets count as
``gradients``; FSDP2's unsharded (all-gathered) parameters as ``parameters``; its sharded
gradients as ``gradients``; all-gather and reduce-scatter buffers and the unsharded
gradients waiting for their reduce-scatter as ``temporaries``.

Steps (update gap 2): steps 0 and 1 warm up (the optimizer state, the first projectors, and
DDP's buckets, which DDP rebuilds in the second forward), step 2 (a projection refresh) gives
``refresh_step``, step 3 (an ordinary step) ``forward``, ``backward`` and ``optimizer_step``.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

from memplan.measure.tracker import CATEGORIES, MemoryTracker, _storage, tensor_bytes

ENGINE_LAYOUTS = ("ddp", "zero1", "fsdp2", "fsdp2-no-reshard")
from memplan.measure.validate import _DTYPE, UPDATE_GAP  # noqa: E402 (the single-GPU validation's)


@dataclass
class DistConfig:
    model: str = "llama-60m"
    method: str = "adamw"
    rank: int = 128
    precision: str = "bf16"
    batch_size: int = 2
    seq_len: int = 128
    layout: str = "ddp"
    num_gpus: int = 2
    device: str = "cpu"  # cpu (gloo processes) | fake (one process, fake process group)
    bucket_view: bool = False  # DDP's gradient_as_bucket_view (ddp, zero1)
    checkpointing: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.layout not in ENGINE_LAYOUTS:
            raise ValueError(f"Unknown layout {self.layout!r}; expected one of {', '.join(ENGINE_LAYOUTS)}")
        if self.device not in ("cpu", "fake"):
            raise ValueError(f"Distributed validation runs on 'cpu' (gloo) or 'fake', got {self.device!r}")
        if self.device == "fake" and not self.layout.startswith("fsdp2"):
            raise ValueError(f"--device fake runs FSDP2 only: DDP's reducer cannot wrap fake tensors "
                             f"(layout {self.layout!r}); use --device cpu")
        if self.num_gpus < 2:
            raise ValueError(f"A distributed layout needs at least 2 ranks, got {self.num_gpus}")

    @property
    def reshard_after_forward(self) -> bool:
        return self.layout == "fsdp2"


class ResizeTracker(MemoryTracker):
    """``MemoryTracker`` that also follows ``UntypedStorage.resize_`` (as PyTorch's MemTracker does)."""

    def _resized(self, st) -> None:
        info = self._info.get(st)
        if info is None:
            return
        from memplan.measure.tracker import _round
        new = _round(st.nbytes(), self.round_to)
        delta = new - info.nbytes
        if delta:
            info.nbytes = new
            self.current[info.category] += delta
            self.total += delta
            self._update_peak()

    backend_bytes = 0  # the largest storage a collective made of its own (gloo copies its input)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                for inner in _plain(t):
                    if _IN_COLLECTIVE[0] and self.category_of(inner) is None:
                        self.backend_bytes = max(self.backend_bytes, inner.untyped_storage().nbytes())
                        continue
                    self.track(inner, "temporaries", reclassify=False)
        return out

    def __enter__(self):
        orig = self._orig_resize = torch.UntypedStorage.resize_
        tracker = self

        def resize_(st, size):
            out = orig(st, size)
            tracker._resized(st)
            return out

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._orig_resize
        return super().__exit__(*exc)


def _plain(t):
    """The plain tensors behind ``t``: a DTensor's local shard, not its (global-sized) wrapper."""
    if is_traceable_wrapper_subclass(t):
        for name in t.__tensor_flatten__()[0]:
            yield from _plain(getattr(t, name))
    elif isinstance(t, torch.Tensor):
        yield t


# --------------------------------------------------------------------------- build
def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _fsdp_params(model):
    from torch.distributed.fsdp import FSDPModule
    for m in model.modules():
        if isinstance(m, FSDPModule):
            for group in m._get_fsdp_state()._fsdp_param_groups:
                yield from group.fsdp_params


def _build_model(cfg: DistConfig):
    from memplan.methods import get_method
    from memplan.models import build_model
    from memplan.profiles import load_model
    if get_method(cfg.method).adapter:
        raise ValueError(f"Adapter methods ({cfg.method}) are not validated under distributed layouts")
    profile = load_model(cfg.model)
    torch.manual_seed(cfg.seed)
    model = build_model(profile, dtype=_DTYPE[cfg.precision], device="cpu", checkpointing=cfg.checkpointing)
    model.train()
    ids = torch.randint(0, profile.vocab_size, (cfg.batch_size, cfg.seq_len))
    return model, {"input_ids": ids, "labels": ids.clone()}


def _optimizer(model, cfg: DistConfig):
    from memplan.optim import build_optimizer
    opt = build_optimizer(model, cfg.method, rank=cfg.rank, update_gap=UPDATE_GAP, total_steps=4)
    if cfg.layout != "zero1":
        return opt
    from torch.distributed.optim import ZeroRedundancyOptimizer
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in opt.param_groups]
    extra = {"total_steps": 4} if cfg.method == "golore" else {}
    accepted = inspect.signature(type(opt).__init__).parameters
    defaults = {k: v for k, v in opt.defaults.items() if k in accepted}
    return ZeroRedundancyOptimizer(groups, optimizer_class=type(opt), **{**defaults, **extra})


def _wrap(model, cfg: DistConfig, mesh):
    if cfg.layout in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, gradient_as_bucket_view=cfg.bucket_view)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if cfg.precision == "mixed" else MixedPrecisionPolicy())
    for block in model.model.layers:
        fully_shard(block, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward, mp_policy=mp)
    fully_shard(model, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward, mp_policy=mp)
    return model


# --------------------------------------------------------------------------- measure
def _run(cfg: DistConfig, mesh) -> dict:
    model, batch = _build_model(cfg)
    tracker = ResizeTracker()
    fsdp = cfg.layout.startswith("fsdp2")
    records = {}
    with tracker:
        tracker.watch_model(model)
        for t in batch.values():
            tracker.track(t, "activations")
        wrapped = _wrap(model, cfg, mesh)
        if fsdp:
            for p in model.parameters():
                tracker.track(_local(p), "parameters")
        opt = _optimizer(model if fsdp else wrapped.module, cfg)
        for step in range(4):
            if step == 2:
                _classify_engine_buffers(model, tracker, fsdp, batch)
            records[step] = _step(wrapped, opt, batch, tracker)
    local = [_local(p) for p in model.parameters()]
    persistent = {"parameters": tensor_bytes(local), "gradients": max(records[2]["gradients"], records[3]["gradients"]),
                  **_state_bytes(opt)}
    phases = dict(records[3]["phases"])
    phases["refresh_step"] = records[2]["phases"]["optimizer_step"]
    return {"phases": phases, "persistent": persistent, "backend_bytes": tracker.backend_bytes}


def _classify_engine_buffers(model, tracker, fsdp: bool, batch) -> None:
    """After the warm-up steps, the storages the engine keeps get their category.

    FSDP2: the unsharded parameters (storages resized to 0 between uses, kept) are
    ``parameters``. DDP rebuilds its buckets in the second forward; whatever is alive now
    besides the model, the optimizer state and the batch is those buckets: ``gradients``.
    """
    if fsdp:
        for fp in _fsdp_params(model):
            for t in fp.all_gather_outputs:
                tracker.track(t, "parameters")
            tracker.track(fp._unsharded_param, "parameters")
        return
    keep = {id(_storage(t)) for t in batch.values()}
    for st, info in list(tracker._info.items()):
        if info.category in ("activations", "temporaries") and id(st) not in keep:
            tracker.current[info.category] -= info.nbytes
            tracker.current["gradients"] += info.nbytes
            info.category = "gradients"


def _step(model, opt, batch, tracker) -> dict:
    phase = tracker.set_phase  # plain phase names: the tracker's pack hook looks for "forward"
    opt.zero_grad(set_to_none=True)
    tracker.peaks.clear()
    phase("forward")
    loss = model(**batch)
    tracker.promote("temporaries", "activations")
    phase("backward")
    loss.backward()
    del loss
    grads = [_local(p.grad) for p in model.parameters() if p.grad is not None]
    for g in grads:
        tracker.track(g, "gradients")
    held = tracker.current["gradients"]
    del grads
    phase("optimizer_step")
    opt.step()
    for t, cat in _state_tensors(opt):
        tracker.track(_local(t), cat)
    opt.zero_grad(set_to_none=True)
    phase(None)
    return {"phases": {n: {**{c: tracker.peaks.get(n, {}).get(c, 0) for c in CATEGORIES},
                           "total": tracker.peaks.get(n, {}).get("total", 0)}
                       for n in ("forward", "backward", "optimizer_step")},
            "gradients": held}


def _state_tensors(opt):
    from memplan.measure.tracker import optimizer_state_tensors
    inner = getattr(opt, "optim", None)  # ZeroRedundancyOptimizer's local optimizer
    return optimizer_state_tensors(inner if inner is not None else opt)


def _state_bytes(opt) -> dict:
    inner = getattr(opt, "optim", None)
    target = inner if inner is not None else opt
    seen, res = set(), {"optimizer_states": 0, "projectors": 0}
    for t, cat in _state_tensors(target):
        st = _local(t).untyped_storage()
        if id(st) not in seen:
            seen.add(id(st))
            res[cat] += st.nbytes()
    return res


# --------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SETTLE_SECONDS = 2.0
_IN_COLLECTIVE = [0]


def _settled(collective):
    """``collective`` (a synchronous c10d call) as NCCL would hold memory: no buffers of its own, and
    its tensors let go when it returns.

    Gloo's ``reduce_scatter_single`` copies its input into a storage of its own (seen by the
    tracker only as the ``split`` of it): 125 MiB for llama-60m's root unit in fp32, which made
    FSDP2's world-2 peak 7.6% above the estimate. NCCL reduces in place, so storages a collective
    makes are left out of the categories (``ResizeTracker.backend_bytes`` keeps the largest).

    Gloo runs each collective on a worker thread that drops its references to the input and
    output a moment after the caller's ``wait`` returns. When the caller has already dropped its
    own (FSDP2 frees an all-gather input or a reduce-scatter input right after the call), the
    storage is freed on that thread at a time the scheduler picks: late enough, now and then, to
    sit under the next block's buffers and raise one rank's peak by a buffer (-4.3% on the tiny
    model's FSDP2 backward, one run in six). With NCCL the caller's ``wait`` releases them, so the
    release time is the call's return: this wrapper waits (at most ``SETTLE_SECONDS``) until each
    tensor's storage is referenced no more than before the call.
    """
    def call(*args, async_op: bool = False, **kwargs):
        if async_op:
            return collective(*args, async_op=True, **kwargs)
        storages = [a.untyped_storage() for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        before = [torch._C._storage_Use_Count(st._cdata) for st in storages]
        _IN_COLLECTIVE[0] += 1
        try:
            out = collective(*args, **kwargs)
        finally:
            _IN_COLLECTIVE[0] -= 1
        deadline = time.monotonic() + SETTLE_SECONDS
        while (any(torch._C._storage_Use_Count(st._cdata) > n for st, n in zip(storages, before))
               and time.monotonic() < deadline):
            time.sleep(0)
        return out
    return call


@contextlib.contextmanager
def _released_collectives():
    """FSDP2's collectives (``all_gather_single``, ``reduce_scatter_single``) wrapped by ``_settled``."""
    import torch.distributed as dist
    names = ("all_gather_single", "reduce_scatter_single")
    orig = {n: getattr(dist, n) for n in names}
    for n in names:
        setattr(dist, n, _settled(orig[n]))
    try:
        yield
    finally:
        for n in names:
            setattr(dist, n, orig[n])


def _worker(rank: int, world: int, port: int, cfg_file: str, out_file: str) -> None:
    """One rank: run every config of ``cfg_file`` in turn, one JSON line per config to ``out_file``."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    cfgs = [DistConfig(**c) for c in json.loads(open(cfg_file).read())]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = None
        for cfg in cfgs:
            if cfg.layout.startswith("fsdp2") and mesh is None:
                from torch.distributed.device_mesh import init_device_mesh
                mesh = init_device_mesh("cpu", (world,))
            t0 = time.perf_counter()
            try:
                with _released_collectives():
                    out = _run(cfg, mesh)
                out["seconds"] = round(time.perf_counter() - t0, 2)
            except Exception as e:  # report it, and keep the ranks in step for the next config
                out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            with open(out_file, "a") as f:
                f.write(json.dumps(out) + "\n")
            dist.barrier()
    finally:
        dist.destroy_process_group()


def measure_gloo(cfgs: list[DistConfig], on_result=None, timeout: float | None = None) -> list[list[dict]]:
    """Run ``cfgs`` (one world size) in one set of gloo processes; per config, one dict per rank.

    ``on_result(i, ranks)`` is called as config ``i`` completes on every rank.
    """
    world = cfgs[0].num_gpus
    if any(c.num_gpus != world for c in cfgs):
        raise ValueError("measure_gloo runs configs of one world size at a time")
    with tempfile.TemporaryDirectory(prefix="memplan-dist-") as tmp:
        cfg_file = os.path.join(tmp, "configs.json")
        with open(cfg_file, "w") as f:
            json.dump([asdict(c) for c in cfgs], f)
        port = _free_port()
        outs = [os.path.join(tmp, f"rank{r}.jsonl") for r in range(world)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, "-m", "memplan.measure.distributed", str(r), str(world), str(port),
                                   cfg_file, outs[r]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for r in range(world)]
        done, t0 = 0, time.monotonic()
        results: list[list] = [[None] * world for _ in cfgs]
        try:
            while done < len(cfgs):
                time.sleep(0.5)
                lines = [_lines(o) for o in outs]
                while done < len(cfgs) and all(len(ls) > done for ls in lines):
                    results[done] = [ls[done] for ls in lines]
                    if on_result is not None:
                        on_result(done, results[done])
                    done += 1
                if done < len(cfgs) and any(p.poll() is not None for p in procs):
                    if all(p.poll() == 0 for p in procs):
                        continue
                    err = next((p.stderr.read().decode(errors="replace") for p in procs if p.poll()), "")
                    raise RuntimeError("a rank's process died: " + (err.strip().splitlines() or ["?"])[-1])
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"distributed run did not finish in {timeout:.0f} s")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
                p.stderr.close()
    return results


def _lines(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


@contextlib.contextmanager
def fake_world(world: int, rank: int = 0):
    """A fake process group of ``world`` ranks (this process is ``rank``) and its 1-D CPU mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield init_device_mesh("cpu", (world,))
    finally:
        dist.destroy_process_group()


def measure_fake(cfg: DistConfig) -> list[dict]:
    """FSDP2 rank 0 (the worst rank) of ``cfg.num_gpus`` under FakeTensorMode; a one-element list."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    import memplan.models  # noqa: F401  (module-level tensors stay real)
    import memplan.optim  # noqa: F401
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        with fake_world(cfg.num_gpus) as mesh, FakeTensorMode(allow_non_fake_inputs=False):
            out = _run(cfg, mesh)
    finally:
        torch.set_num_threads(threads)
    out["seconds"] = time.perf_counter() - t0
    return [out]


def torch_tracker_peak(cfg: DistConfig, steps: int = 4) -> int:
    """The peak bytes per iteration that PyTorch's own ``FSDPMemTracker`` reports for ``cfg`` (FSDP2,
    fake world, rank 0), the largest over ``steps`` iterations: the oracle ``ResizeTracker`` is
    checked against (its stats are reset after every iteration, as the tracker needs)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    import memplan.models  # noqa: F401
    import memplan.optim  # noqa: F401
    if cfg.device != "fake" or not cfg.layout.startswith("fsdp2"):
        raise ValueError("torch_tracker_peak runs FSDP2 under a fake process group")
    peak = 0
    with fake_world(cfg.num_gpus) as mesh, FakeTensorMode(allow_non_fake_inputs=False):
        model, batch = _build_model(cfg)
        _wrap(model, cfg, mesh)
        opt = _optimizer(model, cfg)
        tracker = FSDPMemTracker(mod=model, optm=opt)
        with tracker:
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = model(**batch)
                loss.backward()
                del loss
                opt.step()
                opt.zero_grad(set_to_none=True)
                snap = tracker.get_tracker_snapshot("peak")
                peak = max(peak, max(v.get("Total", 0) for v in snap.values()))
                tracker.reset_mod_stats()
    return peak


def measure_dist(cfg: DistConfig) -> list[dict]:
    return measure_fake(cfg) if cfg.device == "fake" else measure_gloo([cfg])[0]


def config_dict(cfg: DistConfig) -> dict:
    return asdict(cfg)


if __name__ == "__main__":  # a gloo rank: python -m memplan.measure.distributed RANK WORLD PORT CONFIGS OUT
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
