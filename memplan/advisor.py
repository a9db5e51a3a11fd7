"""The advisor: for a run that does not fit (or fits tightly), the changes that make it fit.

    advice = memplan.advise("llama-7b", "rtx-4090", "golore", rank=128)
    advice.single      # single changes that fit, ranked (Option: changes, headroom, cost)
    advice.pairs       # the best pairs, when no single change suffices
    advice.not_enough  # single changes tried that do not fit alone

Every number comes from the planner: a change "fits" when `planner.fits` says so, and
the sizes (batch, sequence, rank) are the planner's exact bisection (`planner.largest`):
the advised size fits and the next one up does not. Nothing here models memory.

The goal is the planner's fit (device total <= what CUDA can allocate). A run that
fits with less than `TIGHT_SHARE` of the GPU free is "tight": then the goal is that
much headroom, and the advice lists what gets there.

When no single change of the first two tiers (same result, or an approximation) suffices
on the same GPUs, the best pairs are listed too: two switches, or a switch and a size
searched under it.

Ranking: first by the cost tier of the change (`TIERS`: same result but slower, then
approximations, then a different training run, then more hardware), then by headroom,
largest first. Pairs: rank by their worse tier, then the sum of tiers, then headroom.
Each change carries its cost in one phrase and the source of that phrase.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations

from memplan.errors import MemplanError
from memplan.estimator import TrainingConfig, capacity_bytes, make_config
from memplan.methods import METHODS
from memplan.parallel import LAYOUTS
from memplan.planner import GPU_COUNTS, fits, largest, per_gpu, resolve_gpu
from memplan.profiles import GPUProfile

TIGHT_SHARE = 0.05  # a fit with less than 5% of the GPU free is tight (the estimate's own fragmentation margin)
TIERS = {0: "same result, slower", 1: "approximation", 2: "different training run", 3: "more hardware"}
PAIRS_SHOWN = 5


@dataclass(frozen=True)
class Change:
    key: str  # what changes: "checkpointing", "batch_size", "method", "gpus", ...
    label: str  # as a user types it: "--checkpointing", "--batch-size 3", "--method galore8bit"
    tier: int  # cost class, TIERS
    cost: str  # the cost in one phrase
    source: str  # where the phrase comes from

    def to_dict(self) -> dict:
        return {"key": self.key, "label": self.label, "tier": self.tier, "tier_name": TIERS[self.tier],
                "cost": self.cost, "source": self.source}


@dataclass(frozen=True)
class Run:
    config: TrainingConfig
    layout: str = "single"
    num_gpus: int = 1


@dataclass(frozen=True)
class Option:
    changes: tuple[Change, ...]
    run: Run
    required_bytes: int  # device total per GPU after the changes
    headroom_bytes: int  # capacity - required

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0

    @property
    def label(self) -> str:
        return " + ".join(c.label for c in self.changes)

    def to_dict(self) -> dict:
        return {"changes": [c.to_dict() for c in self.changes], "label": self.label, "layout": self.run.layout,
                "num_gpus": self.run.num_gpus, "required_bytes": self.required_bytes,
                "headroom_bytes": self.headroom_bytes}


@dataclass(frozen=True)
class Advice:
    run: Run
    gpu: GPUProfile
    capacity_bytes: int
    required_bytes: int
    goal_bytes: int  # the headroom each advised option keeps (0: just fit; tight runs: TIGHT_SHARE)
    single: tuple[Option, ...]  # single changes reaching the goal, ranked
    pairs: tuple[Option, ...]  # best pairs, when no single tier-0/1 change reaches it on the same GPUs
    not_enough: tuple[Option, ...]  # single changes tried that fall short

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.required_bytes

    @property
    def status(self) -> str:
        """"fits", "tight" or "does not fit"."""
        if self.headroom_bytes < 0:
            return "does not fit"
        return "tight" if self.headroom_bytes < self.goal_bytes else "fits"

    def to_dict(self) -> dict:
        return {"gpu": self.gpu.id, "status": self.status, "capacity_bytes": self.capacity_bytes,
                "required_bytes": self.required_bytes, "headroom_bytes": self.headroom_bytes,
                "goal_headroom_bytes": self.goal_bytes, "single": [o.to_dict() for o in self.single],
                "pairs": [o.to_dict() for o in self.pairs], "not_enough": [o.to_dict() for o in self.not_enough],
                "units": "bytes"}


# ---------------------------------------------------------------- the costs, each from a source

CHECKPOINTING = Change("checkpointing", "--checkpointing", 0,
                       "re-computes each block's forward in backward: one extra forward pass, about a third more "
                       "compute", "Chen et al., Training Deep Nets with Sublinear Memory Cost (2016), abstract "
                       "(a backward pass costs about two forwards)")
LAYERWISE = Change("layerwise", "--layerwise", 0,
                   "steps each weight during backward: no gradient accumulation, no global clipping, one GPU",
                   "GaLore (Zhao et al., ICML 2024), Sec. 4.3 and the galore-torch README")
BATCH = ("batch_size", 0, "fewer tokens per step; gradient accumulation keeps the global batch, slower",
         "gradient accumulation: the same summed gradient over micro-batches")
BATCH_LAYERWISE = ("batch_size", 2, "a smaller global batch: the per-layer update allows no gradient accumulation",
                   "GaLore (Zhao et al., ICML 2024), Sec. 4.3 and the galore-torch README")
EIGHTBIT = ("eightbit", 1, "8-bit block-wise moments: 32-bit optimizer performance maintained",
            "Dettmers et al., 8-bit Optimizers via Block-wise Quantization (ICLR 2022), abstract")
RANK = ("rank", 2, "a smaller subspace: higher perplexity at equal steps",
        "GaLore (Zhao et al., ICML 2024), Fig. 5 rank ablation")
SEQ = ("seq_len", 2, "shorter training context: nothing learned beyond it", "by definition")
GPUS = ("gpus", 3, "more GPUs; ZeRO-1/2 move as much data as DDP, ZeRO-3 1.5x",
        "Rajbhandari et al., ZeRO (SC 2020), Sec. 7")

WEIGHTS = {  # --weights FORMAT: the cost, and where the phrase comes from
    "int8": ("INT8 weights, stochastic rounding: comparable to 16-bit training",
             "Zhang et al., Q-GaLore (2024), abstract; Zhu et al., APOLLO (MLSys 2025), Q-APOLLO"),
    "nf4": ("NF4 frozen base: preserves 16-bit fine-tuning performance",
            "Dettmers et al., QLoRA (NeurIPS 2023), abstract"),
}

OFFLOAD = ("offload", 0, "optimizer state and step on the CPU: weights and gradients cross PCIe every step",
           "torchao 0.18 CPUOffloadOptimizer docstring")
OFFLOAD_GRADS = ("offload", 0, "as --offload optimizer, and gradients leave the GPU: no gradient accumulation",
                 "torchao 0.18 CPUOffloadOptimizer docstring (offload_gradients)")
FUSED_LOSS = ("loss", 0, "head and cross-entropy fused in chunks, no full logits: same loss; the Liger suite "
              "reports ~20% more throughput", "Hsu et al., Liger Kernel: Efficient Triton Kernels for LLM "
              "Training (2024), abstract")

EIGHTBIT_TWIN = {"adamw": "adam8bit", "galore": "galore8bit", "gradnormlorp": "gradnormlorp8bit"}


# switching to a method: what its paper's abstract claims for it (the method record's `paper` is the source)
METHOD_COSTS = {
    "galore": "optimizer-state memory down by up to 65.5%, pre-training performance maintained",
    "galore8bit": "optimizer memory down by up to 82.5% (8-bit GaLore), pre-training performance maintained",
    "golore": "random projections: converges with stochastic gradients where GaLore may not",
    "sumo": "one orthogonalized subspace moment: faster convergence than GaLore, less memory",
    "gradnormlorp": "weight-normalized low-rank projection: comparable to full fine-tuning",
    "gradnormlorp8bit": "weight-normalized low-rank projection, 8-bit moments: comparable to full fine-tuning",
    "qgalore": "INT8 weights, INT4 projections: competitive with GaLore; LLaMA-7B from scratch in 16 GB",
    "apollo": "channel-wise scaling from a random projection: on par with or better than AdamW",
    "apollo-mini": "rank-1 tensor-wise scaling: SGD-like memory, AdamW-level performance",
    "fira": "full-rank gradients under GaLore's memory: comparable to or better than full-rank training",
    "qlora": "4-bit NF4 frozen base: preserves 16-bit fine-tuning performance (fine-tuning only)",
}


def method_cost(name: str) -> tuple[str, str]:
    """The cost of switching to method `name`: (phrase, source: the method's paper, abstract)."""
    m = METHODS[name]
    return METHOD_COSTS.get(name, m.description), f"{m.paper}, abstract" if name in METHOD_COSTS else m.paper


def _alternatives(config: TrainingConfig) -> list[str]:
    """Methods a run can switch to: projection methods for full-parameter training; for LoRA its 4-bit form."""
    current = METHODS[config.method]
    twin = EIGHTBIT_TWIN.get(config.method)
    if current.adapter == "lora":
        return [m for m in ("qlora",) if m in METHODS and m != config.method]
    if current.adapter:
        return []
    return [name for name, m in METHODS.items()  # the projection methods: a subspace refreshed every T steps
            if m.refresh_temp is not None and not m.adapter and name not in (config.method, twin)]


# ---------------------------------------------------------------- moves: one change applied to a run

class Search:
    """Fits against one GPU with a headroom goal; memoized (the advisor asks the same runs often)."""

    def __init__(self, gpu: GPUProfile, goal: int, host_ram: int | None = None):
        self.gpu, self.goal, self.host_ram, self._memo = gpu, goal, host_ram, {}

    def required(self, run: Run) -> int:
        key = (run.config, run.layout, run.num_gpus)
        if key not in self._memo:
            self._memo[key] = per_gpu(run.config, run.layout, run.num_gpus).device_total_bytes
        return self._memo[key]

    def ok(self, run: Run) -> bool:
        if self.host_ram is not None and run.config.offload != "none":
            from memplan.estimator import estimate_config

            if estimate_config(run.config).host_bytes > self.host_ram:  # the offloaded state must fit the host
                return False
        return self.required(run) + self.goal <= capacity_bytes(self.gpu)


def _discrete(run: Run) -> list[tuple[Change, Run]]:
    """Changes that switch something on or swap the method (no size search). A change that does not
    combine with the run (an option the new method refuses) is left out."""
    from memplan import offload
    from memplan.estimator import estimate_config, weight_format
    from memplan.impls import carried
    from memplan.units import GiB

    c = run.config
    out = []

    def add(change: Change, **fields) -> None:
        try:
            out.append((change, replace(run, config=make_config(c, **fields))))
        except MemplanError:
            pass

    if not c.checkpointing:
        add(CHECKPOINTING, checkpointing=True)
    if not c.layerwise and run.num_gpus == 1 and c.offload == "none":
        add(LAYERWISE, layerwise=True)
    if c.loss == "standard":
        key, tier, cost, src = FUSED_LOSS
        add(Change(key, "--loss fused-chunked", tier, cost, src), loss="fused-chunked")
    if c.offload == "none" and c.method in offload.OFFLOADABLE and not c.layerwise and run.num_gpus == 1:
        for mode, (key, tier, cost, src) in (("optimizer", OFFLOAD), ("optimizer+gradients", OFFLOAD_GRADS)):
            host = estimate_config(make_config(c, offload=mode)).host_bytes
            add(Change(key, f"--offload {mode} (host {host / GiB:.1f} GiB)", tier, cost, src), offload=mode)
    for fmt in METHODS[c.method].weights:
        if fmt in WEIGHTS and fmt != weight_format(c):
            cost, src = WEIGHTS[fmt]
            add(Change("weights", f"--weights {fmt}", 1, cost, src), weights=fmt)
    twin = EIGHTBIT_TWIN.get(c.method)
    if twin:
        key, tier, cost, src = EIGHTBIT
        add(Change(key, f"--method {twin}", tier, cost, src), method=twin, impl=carried(twin, c.impl))
    for name in _alternatives(c):
        cost, src = method_cost(name)
        add(Change("method", f"--method {name}", 2, cost, src), method=name, impl=carried(name, c.impl))
    return out


def _sized(run: Run, s: Search) -> list[tuple[Change, Run]]:
    """Changes that shrink a size, to the largest that reaches the goal (planner.largest), or to 1 when
    even 1 does not; and more GPUs. The caller checks the goal."""
    c = run.config
    out = []

    def shrink(field: str, flag: str, spec) -> None:
        current = getattr(c, field)
        if current <= 1:
            return
        n = largest(lambda v: s.ok(replace(run, config=make_config(c, **{field: v}))), current - 1) or 1
        key, tier, cost, src = spec
        out.append((Change(key, f"{flag} {n}", tier, cost, src), replace(run, config=make_config(c, **{field: n}))))

    shrink("batch_size", "--batch-size", BATCH_LAYERWISE if c.layerwise else BATCH)
    shrink("seq_len", "--seq-len", SEQ)
    if METHODS[c.method].uses_rank:
        shrink("rank", "--rank", RANK)
    if not c.layerwise and run.num_gpus == 1 and c.offload == "none":  # torchao's offload: single GPU
        out.append(_more_gpus(run, s))
    return out


def _more_gpus(run: Run, s: Search) -> tuple[Change, Run]:
    """The fewest GPUs, then the least-sharded layout, that reach the goal (the planner's layouts)."""
    from memplan.planner import _modeled

    key, tier, cost, src = GPUS
    layouts = [lay for lay in LAYOUTS[1:] if _modeled(lay, 2, run.config)]  # e.g. no FSDP2 for GaLore
    for n in GPU_COUNTS:
        if n == 1:
            continue
        for lay in layouts:
            new = replace(run, layout=lay, num_gpus=n)
            if s.ok(new):
                return Change(key, f"{n} GPUs, {lay}", tier, cost, src), new
    return Change(key, f"{max(GPU_COUNTS)} GPUs, {layouts[-1]}", tier, cost, src), \
        replace(run, layout=layouts[-1], num_gpus=max(GPU_COUNTS))


def _option(changes, run: Run, s: Search) -> Option:
    need = s.required(run)
    return Option(tuple(changes), run, need, capacity_bytes(s.gpu) - need)


def _rank_key(o: Option):
    tiers = [c.tier for c in o.changes]
    return (max(tiers), sum(tiers), -o.headroom_bytes, o.label)


# ---------------------------------------------------------------- the advice

def advise_config(config: TrainingConfig, gpu: GPUProfile, *, layout: str = "single", num_gpus: int = 1,
                  min_headroom: int | None = None, host_ram: int | None = None) -> Advice:
    """The advice for `config` on `gpu`. `min_headroom`: bytes to keep free (None: 0, or
    TIGHT_SHARE of the GPU for a run that already fits with less than that). `host_ram`: bytes of
    host memory; an offloading change whose host figure exceeds it does not count as fitting."""
    cap = capacity_bytes(gpu)
    run = Run(config, layout, num_gpus)
    need = per_gpu(config, layout, num_gpus).device_total_bytes
    if min_headroom is None:
        tight = int(TIGHT_SHARE * cap)
        min_headroom = tight if 0 <= cap - need < tight else 0
    s = Search(gpu, min_headroom, host_ram)
    if s.ok(run):
        return Advice(run, gpu, cap, need, min_headroom, (), (), ())

    single, short = [], []
    for change, new in _discrete(run) + _sized(run, s):
        (single if s.ok(new) else short).append(_option([change], new, s))
    single.sort(key=_rank_key)
    short.sort(key=lambda o: -o.headroom_bytes)
    cheap = [o for o in single if o.run.num_gpus == run.num_gpus and o.changes[0].tier <= 1]
    pairs = () if cheap else tuple(_pairs(run, s))
    return Advice(run, gpu, cap, need, min_headroom, tuple(single), pairs, tuple(short))


def _pairs(run: Run, s: Search) -> list[Option]:
    """Two changes together: two switches, or a switch then a size searched under it."""
    found = {}
    firsts = [(c, r) for c, r in _discrete(run) if not s.ok(r)]  # a change enough alone is no half of a pair
    for (c1, r1), (c2, _) in combinations(firsts, 2):
        if c1.key == c2.key or {c1.key, c2.key} <= {"method", "eightbit"}:
            continue  # two method switches are one switch
        r2 = dict((c.label, r) for c, r in _discrete(r1)).get(c2.label)
        if r2 is not None and s.ok(r2):
            o = _option([c1, c2], r2, s)
            found[o.label] = o
    for c1, r1 in firsts:
        for c2, r2 in _sized(r1, s):
            if s.ok(r2):
                o = _option([c1, c2], r2, s)
                found[o.label] = o
    return sorted(found.values(), key=_rank_key)[:PAIRS_SHOWN]


def advise(model, gpu, method: str | None = None, *, gpu_file=None, layout: str = "single", num_gpus: int = 1,
           min_headroom: int | None = None, host_ram: int | None = None, **options) -> Advice:
    """What to change so that a run fits `gpu`. `model`: a TrainingConfig, or a model spec with
    `method` and TrainingConfig options (rank, batch_size, seq_len, layerwise, checkpointing, ...)."""
    config = make_config(model, method, **options)
    return advise_config(config, resolve_gpu(gpu, gpu_file), layout=layout, num_gpus=num_gpus,
                         min_headroom=min_headroom, host_ram=host_ram)
