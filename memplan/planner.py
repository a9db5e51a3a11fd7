"""The planner: what fits where, the largest batch / sequence / rank, and what to buy.

    memplan.max_batch_size("llama-7b", "rtx-4090", "galore8bit", layerwise=True, checkpointing=True)
    memplan.max_seq_len("llama-7b", "rtx-4090", "galore8bit", checkpointing=True)
    memplan.max_rank("llama-7b", "rtx-4090", "golore", checkpointing=True)
    memplan.compare("llama-7b", rank=128, gpu="rtx-4090")
    memplan.sweep("llama-1b", "galore", ranks=[64, 128], batch_sizes=[1, 4, 16])
    memplan.plan("llama-13b", "galore8bit", batch_size=4, seq_len=2048)

Pure Python on top of the estimator, no torch. "Fits" means the estimate's device
total (allocated peak + CUDA context + fragmentation, per GPU under a layout, see
memplan/parallel.py) is at most what CUDA can allocate on the GPU (`Estimate.fit`).

Searches bisect on the estimator, never scan: an exponential search finds a size
that does not fit, then a binary search keeps `lo` fitting and `hi` not fitting
until they are adjacent. So the answer always fits and answer + 1 never does, even
where the memory is not monotone (8-bit state switches from fp32 to uint8 at 4096
elements, so a larger rank can need a few bytes less); where it is monotone
(batch, sequence) the answer is the largest that fits. Limits: batch and sequence
stop at `MAX_BATCH` / `MAX_SEQ_LEN` (a result equal to the limit means "at least");
the sequence is not capped at the model's max_position_embeddings, since RoPE
models can run longer. The rank stops at the smallest projected dimension.
A search returns 0 when even 1 does not fit; `max_rank` returns None for methods
without a rank.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from collections.abc import Callable, Iterable

from memplan import limits
from memplan.errors import MemplanError
from memplan.estimator import Estimate, TrainingConfig, capacity_bytes, estimate_config, make_config
from memplan.inventory import resolve_targets, shape_groups
from memplan.methods import METHODS, get_method
from memplan.parallel import ENGINES, LAYOUTS, check_layout, shard
from memplan.profiles import GPUProfile, load_gpu, load_gpus

MAX_BATCH = 1 << 20
MAX_SEQ_LEN = 1 << 20  # 1,048,576 tokens: a search limit, not the model's position limit
GPU_COUNTS = (1, 2, 4, 8)


# ---------------------------------------------------------------- inputs

def resolve_gpu(gpu: "str | GPUProfile", gpu_file=None) -> GPUProfile:
    """A GPU profile id, a GPUProfile, or 'local' / 'local:N' (this machine's GPU N, via NVML)."""
    return load_gpu(gpu, gpu_file)


def per_gpu(config: TrainingConfig, layout: str = "single", num_gpus: int = 1) -> Estimate:
    """The estimate of `config` per GPU under `layout` (the plain estimate for one GPU)."""
    est = estimate_config(config)
    return est if layout == "single" else shard(est, layout, num_gpus)


def fits(config: TrainingConfig, gpu: GPUProfile, layout: str = "single", num_gpus: int = 1,
         min_headroom: int = 0) -> bool:
    """Device total per GPU + `min_headroom` bytes <= what CUDA can allocate on `gpu`."""
    return per_gpu(config, layout, num_gpus).device_total_bytes + min_headroom <= capacity_bytes(gpu)


# ---------------------------------------------------------------- bisection

def largest(ok: Callable[[int], bool], limit: int) -> int:
    """Largest n in [1, limit] with ok(n), by exponential then binary search; 0 if not ok(1).

    Invariant: ok(lo) and not ok(hi); the result is lo once hi == lo + 1, so it
    satisfies ok(n) and not ok(n + 1) (unless it is `limit`).
    """
    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and ok(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        if ok(limit):
            return limit
        hi = limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _search(field: str, limit: int, model, gpu, method, gpu_file, layout, num_gpus, min_headroom, options) -> int:
    config = make_config(model, method, **options)
    g = resolve_gpu(gpu, gpu_file)
    layout = check_layout(layout, num_gpus, config.layerwise, config.method, config.precision, config.offload)
    if field == "seq_len" and config.model.sliding_window:  # longer sequences are not modelled (estimator)
        limit = min(limit, config.model.sliding_window)
    return largest(lambda n: fits(make_config(config, **{field: n}), g, layout, num_gpus, min_headroom), limit)


def max_batch_size(model, gpu, method: str | None = None, *, gpu_file=None, layout: str = "single",
                   num_gpus: int = 1, min_headroom: int = 0, limit: int = MAX_BATCH, **options) -> int:
    """Largest micro-batch per GPU that fits at the given seq_len; 0 if batch 1 does not fit.

    `model`: a TrainingConfig, or a model spec with `method` and TrainingConfig
    options (rank, seq_len, precision, layerwise, checkpointing, ...). `layout` and
    `num_gpus`: see memplan/parallel.py. `min_headroom`: bytes to keep free per GPU.
    """
    return _search("batch_size", limit, model, gpu, method, gpu_file, layout, num_gpus, min_headroom, options)


def max_seq_len(model, gpu, method: str | None = None, *, gpu_file=None, layout: str = "single",
                num_gpus: int = 1, min_headroom: int = 0, limit: int = MAX_SEQ_LEN, **options) -> int:
    """Largest sequence length that fits at the given batch_size (default 1); 0 if 1 token does not fit.

    Capped at `limit` (1,048,576): a result equal to it means "at least".
    """
    if not isinstance(model, TrainingConfig):
        options.setdefault("batch_size", 1)
    return _search("seq_len", limit, model, gpu, method, gpu_file, layout, num_gpus, min_headroom, options)


def rank_limit(config: TrainingConfig) -> int:
    """The largest rank a config can take: the smallest dimension of its projected weights."""
    targets = resolve_targets(config.model, config.target_modules)
    return min(min(t.shape) for t, _ in shape_groups(config.model, targets) if t.projected)


def max_rank(model, gpu, method: str | None = None, *, gpu_file=None, layout: str = "single",
             num_gpus: int = 1, min_headroom: int = 0, **options) -> int | None:
    """Largest rank that fits, up to the smallest projected dimension; None for methods without rank."""
    # the rank is searched: start from rank 1 so a default rank above this model's limit is not checked
    config = make_config(model, method, **{**options, "rank": 1})
    if not METHODS[config.method].uses_rank:
        return None
    return _search("rank", rank_limit(config), config, gpu, None, gpu_file, layout, num_gpus, min_headroom, {})


# ---------------------------------------------------------------- fit report

@dataclass(frozen=True)
class FitRow:
    """One method's row of `memplan fit`: its largest sizes on the GPU and its memory there."""

    method: str
    rank: int | None  # None: the method has no rank
    layerwise: bool
    checkpointing: bool
    fits: bool  # at the given batch size and sequence length
    required_bytes: int  # device total per GPU
    headroom_bytes: int  # capacity - required; negative: the shortfall
    max_batch_size: int  # at the given seq_len; 0: batch 1 does not fit
    max_seq_len: int  # at batch 1; 0: does not fit; MAX_SEQ_LEN means "at least"
    max_rank: int | None  # at the given batch and seq_len; None without rank; 0: rank 1 does not fit
    host_bytes: int = 0  # host memory of an offloaded run (--offload): pinned copies + optimizer state
    host_fits: bool = True  # the host memory fits the host RAM given (True when none is given)

    def to_dict(self) -> dict:
        return asdict(self)


def _methods(methods) -> list[str]:
    if methods is None:
        return list(METHODS)
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    names = [get_method(m).name for m in methods]
    if not names:
        raise MemplanError("No methods given: use e.g. --methods galore8bit,golore,adamw (see 'memplan methods').")
    return list(dict.fromkeys(names))


def _adapter_option(names: list[str], options: dict) -> tuple[bool | None, dict]:
    """train_non_target applies to the adapter methods among `names` only (an error when there are none)."""
    options = dict(options)
    tnt = options.pop("train_non_target", None)
    if tnt is not None and not any(METHODS[n].adapter for n in names):
        raise MemplanError("--train-non-target / --freeze-non-target apply to adapter methods (lora, relora, "
                           "lowrank) only, and none of the methods chosen is one.")
    return tnt, options


def fit_report(model, gpu, methods=None, *, gpu_file=None, layerwise: Iterable[bool] = (False, True),
               checkpointing: Iterable[bool] = (False, True), host_ram: int | None = None, **options) -> list[FitRow]:
    """For every method x per-layer update x checkpointing: the fit and the largest sizes.

    `options`: TrainingConfig fields shared by all rows (rank, batch_size, seq_len, precision, ...);
    `train_non_target` applies to the adapter methods among them. `host_ram` (bytes): a row fits only
    if an offloaded run's host memory fits it too (the largest sizes are the GPU's: the host memory
    does not grow with the batch or the sequence).
    """
    g = resolve_gpu(gpu, gpu_file)
    cap = capacity_bytes(g)
    names = _methods(methods)
    tnt, options = _adapter_option(names, options)
    rows = []
    for name in names:
        for lw in layerwise:
            for ck in checkpointing:
                c = make_config(model, name, layerwise=lw, checkpointing=ck,
                                train_non_target=tnt if METHODS[name].adapter else None, **options)
                est = estimate_config(c)
                need = est.device_total_bytes
                host_fits = host_ram is None or est.host_bytes <= host_ram
                uses_rank = METHODS[name].uses_rank
                rows.append(FitRow(
                    name, c.rank if uses_rank else None, lw, ck, need <= cap and host_fits, need, cap - need,
                    max_batch_size(c, g), max_seq_len(c, g, batch_size=1), max_rank(c, g), est.host_bytes, host_fits))
    return rows


# ---------------------------------------------------------------- compare and sweep

@dataclass(frozen=True)
class CompareRow:
    method: str
    estimate: Estimate
    saved_bytes: int  # AdamW's peak minus this method's peak (allocated); negative: more than AdamW
    saved_fraction: float  # saved_bytes / AdamW's peak

    def to_dict(self) -> dict:
        e = self.estimate
        out = {"method": self.method, "breakdown": e.breakdown, "peak_phase": e.peak_phase,
               "peak_allocated_bytes": e.peak_bytes, "device_total_bytes": e.device_total_bytes,
               "saved_vs_adamw_bytes": self.saved_bytes, "saved_vs_adamw_fraction": self.saved_fraction}
        if e.gpu is not None:
            out["fit"] = e.fit().to_dict()
        return out


def compare(model, methods=None, *, gpu=None, gpu_file=None, **options) -> list[CompareRow]:
    """Every method (or `methods`) with the same options, sorted by peak; savings against AdamW."""
    g = resolve_gpu(gpu, gpu_file) if gpu is not None else None
    names = _methods(methods)
    tnt, options = _adapter_option(names, options)
    base = make_config(model, "adamw", **options)
    adamw_peak = estimate_config(base).peak_bytes
    rows = []
    for name in names:
        est = estimate_config(make_config(base, method=name, train_non_target=tnt if METHODS[name].adapter else None), g)
        saved = adamw_peak - est.peak_bytes
        rows.append(CompareRow(name, est, saved, saved / adamw_peak))
    return sorted(rows, key=lambda r: (r.estimate.peak_bytes, r.method))


SWEEP_FIELDS = ("rank", "batch_size", "seq_len")


def sweep(model, method: str = "galore", *, ranks=None, batch_sizes=None, seq_lens=None, gpu=None,
          gpu_file=None, **options) -> list[dict]:
    """The peak for every combination of ranks x batch sizes x sequence lengths, as rows (bytes).

    A dimension left as None takes the single value from `options` (or its default).
    """
    g = resolve_gpu(gpu, gpu_file) if gpu is not None else None
    base = make_config(model, method, **options)
    if ranks is not None and not METHODS[base.method].uses_rank:
        raise MemplanError(f"Method '{base.method}' has no rank: drop --ranks, or sweep a projection or "
                           "adapter method (see 'memplan methods').")
    grid = {"rank": ranks, "batch_size": batch_sizes, "seq_len": seq_lens}
    axes = {f: list(v) if v is not None else [getattr(base, f)] for f, v in grid.items()}
    cells = len(axes["rank"]) * len(axes["batch_size"]) * len(axes["seq_len"])
    if cells > limits.SWEEP_CELLS:
        raise MemplanError(f"The sweep has {cells:,} combinations; at most {limits.SWEEP_CELLS:,} are estimated "
                           "at once (about a second). Give fewer ranks, batch sizes or sequence lengths.")
    rows = []
    for r in axes["rank"]:
        for b in axes["batch_size"]:
            for s in axes["seq_len"]:
                est = estimate_config(make_config(base, rank=r, batch_size=b, seq_len=s), g)
                row = {"model": base.model.name, "method": base.method, "precision": base.precision,
                       "layerwise": base.layerwise, "checkpointing": base.checkpointing,
                       "rank": r if METHODS[base.method].uses_rank else None, "batch_size": b, "seq_len": s,
                       "peak_phase": est.peak_phase, "peak_allocated_bytes": est.peak_bytes,
                       "device_total_bytes": est.device_total_bytes}
                if g is not None:
                    fit = est.fit()
                    row.update(gpu=g.id, fits=fit.fits, headroom_bytes=fit.headroom_bytes)
                rows.append(row)
    return rows


# ---------------------------------------------------------------- plan (what to buy or rent)

@dataclass(frozen=True)
class PlanRow:
    gpu: GPUProfile
    num_gpus: int
    layout: str  # the least-sharded layout that fits (parallel.LAYOUTS order)
    per_gpu_bytes: int  # device total per GPU under the layout
    capacity_bytes: int  # per GPU
    max_batch_size: int  # the largest micro-batch per GPU under this layout, at the given seq_len
    host_bytes: int = 0  # host memory of an offloaded run (--offload; one GPU): pinned copies + optimizer state

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.per_gpu_bytes

    @property
    def price_per_hour_usd(self) -> float | None:
        p = self.gpu.price_per_hour_usd
        return None if p is None else self.num_gpus * p

    @property
    def price_purchase_usd(self) -> float | None:
        p = self.gpu.price_purchase_usd
        return None if p is None else self.num_gpus * p

    @property
    def engine(self) -> str:
        """How PyTorch runs the layout, e.g. "FSDP2, reshard after forward" (parallel.ENGINES)."""
        return ENGINES[self.layout]

    def to_dict(self) -> dict:
        return {"gpu": self.gpu.id, "gpu_name": self.gpu.name, "num_gpus": self.num_gpus, "layout": self.layout,
                "engine": self.engine,
                "per_gpu_bytes": self.per_gpu_bytes, "capacity_bytes": self.capacity_bytes,
                "headroom_bytes": self.headroom_bytes, "max_batch_size": self.max_batch_size,
                "host_bytes": self.host_bytes, "price_per_hour_usd": self.price_per_hour_usd, "price_purchase_usd": self.price_purchase_usd,
                "price_date": self.gpu.price_date}


def _modeled(lay: str, count: int, config: TrainingConfig) -> bool:
    try:
        check_layout(lay, count, config.layerwise, config.method, config.precision, config.offload)
        return True
    except MemplanError:  # e.g. a projection method under FSDP2: not modeled, so never proposed
        return False


def _layouts_for(count: int, config: TrainingConfig, layouts) -> list[str]:
    allowed = [lay for lay in LAYOUTS if layouts is None or lay in layouts]
    if count == 1:
        return [lay for lay in allowed if lay == "single"]
    return [lay for lay in allowed if lay != "single" and _modeled(lay, count, config)]


def plan(model, method: str = "adamw", *, gpus=None, gpu_counts=GPU_COUNTS, layouts=None, gpu_file=None,
         sort: str = "hour", min_headroom: int = 0, host_ram: int | None = None, **options) -> list[PlanRow]:
    """Every GPU profile x GPU count that fits, with the least-sharded layout that does, cheapest first.

    `batch_size` is the micro-batch per GPU. `sort`: "hour" (price per hour, then
    purchase) or "purchase" (purchase, then per hour); GPUs without a price come last.
    `min_headroom`: bytes every GPU must keep free (a safety margin; 0: just fit).
    With the per-layer update or CPU offload only single-GPU rows are possible
    (memplan/parallel.py); `host_ram` (bytes): an offloaded run's host memory must fit it
    (the same for every GPU: when it does not, nothing fits).
    """
    if sort not in ("hour", "purchase"):
        raise MemplanError(f"Unknown sort '{sort}'. Allowed: hour, purchase.")
    if isinstance(min_headroom, bool) or not isinstance(min_headroom, int) or min_headroom < 0:
        raise MemplanError(f"min_headroom must be a non-negative number of bytes, got {min_headroom!r}.")
    config = make_config(model, method, **options)
    if layouts is not None:
        from memplan.parallel import resolve_layout

        layouts = {resolve_layout(lay) for lay in layouts}
    counts = sorted({limits.check_int(n, limits.GPU_COUNT, "A GPU count") for n in gpu_counts})
    if not counts:
        raise MemplanError("No GPU counts given: use e.g. --gpu-counts 1,2,4,8.")
    if layouts is not None and not layouts:
        raise MemplanError("No layouts given: use e.g. --layouts single,ddp,zero3 (or leave the option out).")
    if config.layerwise and (1 not in counts or (layouts is not None and "single" not in layouts)):
        raise MemplanError("The per-layer update (--layerwise) is single-GPU only: include 1 in --gpu-counts "
                           "(and 'single' in --layouts), or drop --layerwise.")
    if config.offload != "none" and (1 not in counts or (layouts is not None and "single" not in layouts)):
        raise MemplanError(f"CPU offload (--offload {config.offload}) is modeled on one GPU only: include 1 in "
                           "--gpu-counts (and 'single' in --layouts), or use --offload none.")
    host = estimate_config(config).host_bytes
    if host_ram is not None and host > host_ram:
        return []  # the host memory is the same on every GPU
    pool = load_gpus(gpu_file)
    chosen = list(pool.values()) if gpus is None else [resolve_gpu(x, gpu_file) for x in gpus]
    rows = []
    for g in chosen:
        cap = capacity_bytes(g)
        for n in counts:
            for lay in _layouts_for(n, config, layouts):
                need = per_gpu(config, lay, n).device_total_bytes
                if need + min_headroom <= cap:
                    best = max_batch_size(config, g, layout=lay, num_gpus=n, min_headroom=min_headroom)
                    rows.append(PlanRow(g, n, lay, need, cap, best, host))
                    break
    return sorted(rows, key=lambda r: _price_key(r, sort))


def _price_key(r: PlanRow, sort: str):
    hour, buy = r.price_per_hour_usd, r.price_purchase_usd
    inf = float("inf")
    first, second = (hour, buy) if sort == "hour" else (buy, hour)
    return (first is None, first if first is not None else inf, second if second is not None else inf,
            r.num_gpus, LAYOUTS.index(r.layout), r.gpu.id)
