"""The analytic estimator: memory of one training step, by category and by phase.

    est = memplan.estimate("llama-7b", "golore", rank=128, batch_size=1, seq_len=2048)
    est.breakdown          # {category: bytes} at the peak phase, overhead included
    est.phases             # {phase: {category: bytes}} allocated bytes per phase
    est.peak_phase, est.peak_bytes, est.device_total_bytes
    est.fit("rtx-4090")    # Fit(fits, headroom_bytes, ...)

Pure Python (no torch) and fast: the inventory is grouped by shape once per model,
and an estimate applies each method's rule to a handful of shape groups.
"""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from operator import itemgetter

from memplan import limits
from memplan import offload, records
from memplan.activations import Activations, Knobs, activations
from memplan.categories import PHASES
from memplan.errors import MemplanError
from memplan.inventory import block_order, resolve_targets, shape_groups
from memplan.methods import METHODS, Method, Shape, get_method
from memplan.phases import StepTerms, moments_and_peak, phases_of
from memplan.profiles import GPUProfile, ModelProfile, load_gpu, load_model
from memplan.quant import QMAP_BYTES, quantized, weight_bytes
from memplan.reserve import DEFAULT_CONTEXT_BYTES, context_bytes, fragmentation, outside_tensors
from memplan.units import MiB


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the weights, the gradients and the activations."""

    param: int  # bytes per weight element
    grad: int  # bytes per gradient element (and optimizer-state element, which follows it)
    compute: int  # bytes per activation element


PRECISIONS = {
    "bf16": Precision(2, 2, 2),  # pure bf16: weights, gradients, moments (the GaLore recipes)
    "mixed": Precision(4, 4, 2),  # fp32 master weights, gradients and moments; bf16 autocast
    "fp32": Precision(4, 4, 4),
}

# What a CUDA device adds on top of the tensors (memplan/reserve.py): the caching allocator's
# reserve beyond the allocated peak (a rule fitted to allocator replays) and the CUDA context
CUDA_CONTEXT_BYTES = DEFAULT_CONTEXT_BYTES  # without a GPU profile (profiles give their own)
UNKNOWN_USABLE_MARGIN = 0.02  # share of nvidia-smi's total that CUDA cannot allocate, when not measured


@records.local_caches
@dataclass(frozen=True)
class TrainingConfig:
    """One training run to estimate. Every field has a short meaning."""

    model: ModelProfile
    method: str = "adamw"
    rank: int = 128  # projection / adapter rank (projection and adapter methods only)
    update_gap: int = 200  # projection refresh interval T, in optimizer steps
    target_modules: tuple[str, ...] | None = None  # None: the model family's defaults
    precision: str = "bf16"  # bf16 | mixed | fp32
    batch_size: int = 1  # micro-batch size per GPU
    seq_len: int = 2048
    layerwise: bool = False  # per-layer weight update during backward
    checkpointing: bool = False  # activation checkpointing per block
    train_non_target: bool | None = None  # adapter methods: train embeddings/head/norms (None: method default)
    impl: str | None = None  # the code that runs the method (see 'memplan methods'); None: the method's default
    momentum: float | None = None  # SGD momentum (0: no buffer); None: the implementation's default
    beta1: float | str | None = None  # Adafactor first moment: a float, "none" (no first moment), None: default
    weights: str | None = None  # block linears stored as bf16 (unquantized) | int8 | nf4; None: the method's default
    offload: str = "none"  # none | optimizer | optimizer+gradients: torchao's CPUOffloadOptimizer (memplan/offload.py)
    loss: str = "standard"  # standard | fused-chunked: Liger's fused linear cross-entropy (memplan/loss.py)
    loss_chunk: int | None = None  # fused-chunked: tokens per chunk (None: Liger's default for the shape)
    attn: str = "sdpa"  # attention implementation: sdpa (flash / memory-efficient kernels) | eager
    attn_dropout: float | None = None  # dropout on the attention probabilities; None: the model config's
    hidden_dropout: float | None = None  # dropout on residual branches and embeddings; None: the model config's
    lora_dropout: float = 0.0  # peft's lora_dropout on each adapted linear's input (adapter methods)
    kernels: str = "cuda"  # whose kernels' saved tensors: cuda | cpu (what validation on CPU / fake tensors runs)

    def __post_init__(self):
        check_config(self)


def _positive(name: str, value, flag: str, bound):
    if type(value) is int and 0 < value and bound.low <= value <= bound.high:  # the usual case, checked fast
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MemplanError(f"{name} must be a positive integer, got {value!r}. Use {flag} N with N >= 1.")
    limits.check_int(value, bound, f"{name} ({flag})")


# Configurations checked, by every field but the batch size and the sequence length (read from the
# instance's dict in one call) and the types of those where a bool, a float or a numpy integer can
# equal a valid value and still be refused (a profile equals only a profile of its own class): the
# batch-independent part of their estimate
# (_static_part), or None until one is made. A sweep's or a search's configurations differ in the
# batch or the sequence only: they are checked for those alone, and the rest is looked up once.
_STATIC: dict = {}
_STATIC_SIZE = 16384  # entries kept, about 1 KiB each (then the table starts again): a large sweep's
_KEYED = tuple(f for f in TrainingConfig.__dataclass_fields__ if f not in ("batch_size", "seq_len"))
_KEY_FIELDS = itemgetter(*_KEYED)
_TYPED_FIELDS = itemgetter("rank", "update_gap", "layerwise", "checkpointing", "train_non_target", "momentum",
                           "beta1", "loss_chunk", "attn_dropout", "hidden_dropout", "lora_dropout")
_UNCHECKED = object()
_BATCH_MAX, _SEQ_MAX = limits.BATCH.high, limits.SEQ.high
assert limits.BATCH.low == limits.SEQ.low == 1


def check_config(c: TrainingConfig) -> None:
    """Refuse (MemplanError) what cannot be estimated, with what to do instead. Only the batch size
    and the sequence length are checked again for fields already checked together (a sweep's).

    Keeps in the config its key in _STATIC (``_fields_key``; None: an unhashable field) and what
    _STATIC holds under it (``_static``), for estimate_config."""
    d = c.__dict__
    try:
        key = _KEY_FIELDS(d) + tuple(map(type, _TYPED_FIELDS(d)))  # (one flat tuple: hashed in one pass)
        static = _STATIC.get(key, _UNCHECKED)
    except TypeError:  # an unhashable field: checked in full
        key, static = None, _UNCHECKED
    if static is _UNCHECKED:
        _check_all(c)
        static = None
        if key is not None:
            if len(_STATIC) >= _STATIC_SIZE:
                _STATIC.clear()
            _STATIC[key] = None
    else:
        b, s = d["batch_size"], d["seq_len"]
        if not (type(b) is int and 0 < b <= _BATCH_MAX and type(s) is int and 0 < s <= _SEQ_MAX):  # (checked fast)
            _positive("Batch size", b, "--batch-size", limits.BATCH)
            _positive("Sequence length", s, "--seq-len", limits.SEQ)
        if c.model.sliding_window:
            _check_window(c)
    d["_fields_key"], d["_static"] = key, static


def _check_window(c: TrainingConfig) -> None:
    window = c.model.sliding_window
    if window and c.seq_len > window:
        raise MemplanError(f"Sequence length {c.seq_len:,} is longer than {c.model.name}'s attention window "
                           f"(config key 'sliding_window' = {window:,}): the windowed attention mask that longer "
                           f"sequences need is not modelled. Use --seq-len {window} or less.")


def _check_all(c: TrainingConfig) -> None:
    method = get_method(c.method)
    if not isinstance(c.model, ModelProfile):
        raise MemplanError(f"TrainingConfig.model must be a ModelProfile (see memplan.load_model), got {c.model!r}.")
    if c.precision not in PRECISIONS:
        from memplan.errors import unknown

        raise unknown("precision", str(c.precision), PRECISIONS, "memplan estimate --help")
    _positive("Batch size", c.batch_size, "--batch-size", limits.BATCH)
    _positive("Sequence length", c.seq_len, "--seq-len", limits.SEQ)
    _positive("Update gap", c.update_gap, "--update-gap", limits.UPDATE_GAP)
    _check_impl_options(c, method)
    for flag in ("layerwise", "checkpointing"):
        if not isinstance(getattr(c, flag), bool):
            raise MemplanError(f"{flag} must be True or False, got {getattr(c, flag)!r}.")
    if c.train_non_target is not None:
        if not isinstance(c.train_non_target, bool):
            raise MemplanError(f"train_non_target must be True, False or None, got {c.train_non_target!r}.")
        if not method.adapter:
            raise MemplanError(f"--train-non-target / --freeze-non-target apply to adapter methods (lora, relora, "
                               f"lowrank) only; '{method.name}' trains every parameter. Drop the option.")
    _check_window(c)
    if c.model.num_local_experts and c.precision != "bf16":
        raise MemplanError(f"{c.model.name} is a mixture of experts: only --precision bf16 is modelled "
                           "(transformers' default grouped_mm experts run in bf16).")
    if c.precision == "mixed" and c.model.family != "llama":
        # measured (FakeTensorMode, transformers 5): autocast's weight copies and fp32 residual stream
        # are modelled for LLaMA-style blocks only; GPT-2 / RoBERTa came out 8% / 19% low at the peak
        raise MemplanError(f"--precision mixed is modelled for LLaMA-style decoders only (LLaMA, Mistral, Qwen); "
                           f"{c.model.name} is a {c.model.model_type} model, whose autocast copies are not "
                           "modelled. Use --precision bf16 or fp32.")
    if c.target_modules is not None:
        resolve_targets(c.model, c.target_modules)  # each name must match a weight: a typo is an error
    _check_model_knobs(c)
    if method.uses_rank:
        _positive("Rank", c.rank, "--rank", limits.RANK)
        k = _smallest_projected_dim(c.model, c.target_modules)
        if c.rank > k:
            raise MemplanError(f"Rank {c.rank} is larger than the smallest projected dimension ({k}) of "
                               f"{c.model.name}. Use --rank between 1 and {k}.")


def weight_format(c: TrainingConfig) -> str:
    """The weight format in effect: the given one, else the format of the implementation asked for
    (q-apollo: int8; q-galore-torch-bf16: bf16), else the method's default."""
    if c.weights:
        return c.weights
    m = METHODS[get_method(c.method).name]
    return next((fmt for fmt, impl in m.weight_impls if impl == c.impl), m.weights[0])


def impl_name(c: TrainingConfig) -> str | None:
    """The implementation asked for; without one, the weight format's own (Q-APOLLO for INT8 APOLLO)."""
    if c.impl is not None:  # '' is not 'the default': get_impl names it as unknown
        return c.impl
    return dict(METHODS[get_method(c.method).name].weight_impls).get(weight_format(c))


def _check_weights(c: TrainingConfig, method: Method) -> None:
    from memplan.quant import WEIGHT_FORMATS

    if c.weights is not None and c.weights not in WEIGHT_FORMATS:
        from memplan.errors import unknown

        raise unknown("weight format", str(c.weights), WEIGHT_FORMATS, "memplan estimate --help")
    if c.weights is not None and c.weights not in method.weights:
        raise MemplanError(f"Method '{method.name}' does not train on {c.weights} weights: it allows "
                           f"{', '.join(method.weights)}. Quantized weights: qlora/lora (nf4), qgalore (int8), "
                           "apollo/apollo-mini (int8).")


def _check_offload_and_loss(c: TrainingConfig, method: Method) -> None:
    from memplan import offload
    from memplan.loss import LOSSES

    offload.check(c.offload, method.name)
    if c.loss not in LOSSES:
        from memplan.errors import unknown

        raise unknown("loss", str(c.loss), LOSSES, "memplan estimate --help")
    if c.loss_chunk is not None:
        _positive("Loss chunk", c.loss_chunk, "--loss-chunk", limits.SEQ)
        if c.loss != "fused-chunked":
            raise MemplanError("--loss-chunk sets the chunk of --loss fused-chunked: add --loss fused-chunked.")


_VALID_IMPL_OPTIONS: set = set()  # option sets already checked: the checks are pure, only failures repeat


def _check_impl_options(c: TrainingConfig, method: Method) -> None:
    try:  # each value with its type: 0 and False (or 1 and True) are equal keys but not equally valid
        w, o, lo, ch, im, mo, b1 = c.weights, c.offload, c.loss, c.loss_chunk, c.impl, c.momentum, c.beta1
        key = (method.name, w, o, lo, ch, im, mo, b1, type(w), type(o), type(lo), type(ch), type(im), type(mo), type(b1))
        if key in _VALID_IMPL_OPTIONS:
            return
    except TypeError:  # an unhashable value: checked (and refused) below
        key = None
    _check_impl_options_now(c, method)
    if key is not None and len(_VALID_IMPL_OPTIONS) < 4096:
        _VALID_IMPL_OPTIONS.add(key)


def _check_impl_options_now(c: TrainingConfig, method: Method) -> None:
    from memplan.impls import NO_BETA1, get_impl

    _check_weights(c, method)
    _check_offload_and_loss(c, method)
    get_impl(method.name, impl_name(c))
    m = c.momentum
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1):
        raise MemplanError(f"Momentum must be a number in [0, 1), got {m!r}. Use --momentum 0.9 (0: no buffer).")
    b = c.beta1
    if b is not None and b != NO_BETA1 and (isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1):
        raise MemplanError(f"beta1 must be a number in [0, 1) or 'none', got {b!r}. Use --beta1 0.9 or --beta1 none.")


ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
KERNELS = ("cuda", "cpu")


def _check_model_knobs(c: TrainingConfig) -> None:
    from memplan.errors import unknown

    if c.attn not in ATTN_IMPLEMENTATIONS:
        raise unknown("attention implementation", c.attn, ATTN_IMPLEMENTATIONS, "memplan estimate --help")
    if c.kernels not in KERNELS:
        raise unknown("kernels", c.kernels, KERNELS, "memplan estimate --help")
    for name, val in (("attn_dropout", c.attn_dropout), ("hidden_dropout", c.hidden_dropout),
                      ("lora_dropout", c.lora_dropout)):
        if val is None and name != "lora_dropout":
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val < 1:
            raise MemplanError(f"{name} must be a probability in [0, 1), got {val!r}. "
                               f"Use --{name.replace('_', '-')} 0.1 (0: no dropout).")


def knobs_of(c: TrainingConfig, adapter_bytes: int = 0, frozen_other: bool = True, base_weights: bool = True) -> Knobs:
    """The model settings in effect (dropouts resolved from the model config when not given)."""
    ad = c.model.attention_dropout if c.attn_dropout is None else c.attn_dropout
    hd = c.model.hidden_dropout if c.hidden_dropout is None else c.hidden_dropout
    return _knobs(c.attn, ad > 0, hd > 0, c.lora_dropout > 0, adapter_bytes, frozen_other, c.kernels == "cuda",
                  base_weights)


@lru_cache(maxsize=256)
def _knobs(attn, attn_dropout, hidden_dropout, lora_dropout, adapter_bytes, frozen_other, cuda, base_weights) -> Knobs:
    """One (frozen, shared) Knobs per combination: every estimate needs one."""
    return Knobs(attn=attn, attn_dropout=attn_dropout, hidden_dropout=hidden_dropout, lora_dropout=lora_dropout,
                 adapter_bytes=adapter_bytes, frozen_other=frozen_other, cuda=cuda, base_weights=base_weights)


def _smallest_projected_dim(model: ModelProfile, targets) -> int:
    if targets is None or isinstance(targets, tuple):  # hashable: cached (every estimate with a rank asks)
        return _smallest_projected_dim_cached(model, targets)
    return _smallest_projected_dim_cached.__wrapped__(model, targets)


@lru_cache(maxsize=1024)
def _smallest_projected_dim_cached(model: ModelProfile, targets) -> int:
    return min(min(s.shape) for s, _ in shape_groups(model, resolve_targets(model, targets)) if s.projected)


@lru_cache(maxsize=512)
def _groups(model: ModelProfile, targets: tuple[str, ...]) -> tuple[tuple[Shape, str, int], ...]:
    """The inventory as (shape, role, count) groups: a handful per model."""
    counts = Counter()
    for s, count in shape_groups(model, targets):
        if len(s.shape) == 3:  # (experts, m, n): E matrices for the optimizer state, never projected
            counts[(Shape(s.shape[1], s.shape[2], False), "expert")] += count * s.shape[0]
            continue
        m, n = (s.shape[0], s.shape[1]) if len(s.shape) == 2 else (s.numel, 1)
        counts[(Shape(m, n, s.projected), s.role)] += count
    return tuple((shape, role, n) for (shape, role), n in counts.items())


@lru_cache(maxsize=4096)
def _tensors(model: ModelProfile, targets, method: Method, rank: int, train_other: bool):
    """(shape, role, count, trainable) after the method's adapters replace target weights."""
    out = []
    for shape, role, n in _groups(model, targets):
        if method.adapter and shape.projected:
            if method.adapter == "lora":  # frozen base + A (r x n) + B (m x r)
                out.append((Shape(shape.m, shape.n, False), role, n, False))
            out.append((Shape(rank, shape.n, False), "adapter", n, True))
            out.append((Shape(shape.m, rank, False), "adapter", n, True))
        else:
            out.append((shape, role, n, not method.adapter or train_other))
    return tuple(out)


def _entries(specs, method: Method, rank: int, train_other: bool) -> list:
    """The trainable tensors of `specs` as (shape, is_adapter): adapters in place of target weights."""
    out = []
    for spec in specs:
        m, n = (spec.shape[0], spec.shape[1]) if len(spec.shape) == 2 else (spec.numel, 1)
        if method.adapter and spec.projected:
            out += [(Shape(rank, n, False), True), (Shape(m, rank, False), True)]
        elif not method.adapter or train_other:
            out.append((Shape(m, n, spec.projected), False))
    return out


@lru_cache(maxsize=1024)
def _step_order(model: ModelProfile, targets, method: Method, rank: int, train_other: bool, regular_first: bool):
    """Trainable tensors as (shape, is_adapter) in the order the optimizer steps them (model order;
    non-projected first when the implementation's recipes group them so)."""
    # one block's entries, repeated by reference: no per-layer objects are made (memplan/inventory.py)
    before, block, after = block_order(model, targets)
    out = (_entries(before, method, rank, train_other) + _entries(block, method, rank, train_other)
           * model.num_hidden_layers + _entries(after, method, rank, train_other))
    if regular_first:
        out = [x for x in out if not x[0].projected] + [x for x in out if x[0].projected]
    return _Order(out)


class _Order(tuple):
    """A step order, hashed by identity: `_step_order` caches it, so `_sequence_temps`'s cache
    looks it up in O(1) instead of hashing every tensor of a deep model on each estimate."""

    __slots__ = ()

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other


@lru_cache(maxsize=1024)
def _sequence_temps(impl, order, r: int, grad_bytes: int, kn) -> tuple[int, int]:
    """(step, refresh) transients of a whole step, per dtype group of the order (foreach groups so)."""
    groups: dict[int, list] = {}
    for shape, adapter in order:
        s = impl.adapter_bytes if adapter and impl.adapter_bytes else grad_bytes
        groups.setdefault(s, []).append(shape)
    step = max((impl.sequence_temp(g, r, s, kn) for s, g in groups.items()), default=0) if impl.sequence_temp else 0
    refresh = (max((impl.sequence_refresh(g, r, s, kn) for s, g in groups.items()), default=0)
               if impl.sequence_refresh else 0)
    return step, refresh


@lru_cache(maxsize=512)
def _adapted_inputs(model: ModelProfile, targets) -> tuple[tuple[str, int, int], ...]:
    """(module path, input width, output width) of each adapted linear in one block (GPT-2's Conv1D
    stores (in, out))."""
    gpt2 = model.family == "gpt2"
    return tuple((s.name[: -len(".weight")], s.shape[0] if gpt2 else s.shape[1], s.shape[1] if gpt2 else s.shape[0])
                 for s, _ in shape_groups(model, targets) if s.projected)


@dataclass(frozen=True)
class Fit:
    """Whether an estimate fits a GPU, and by how much."""

    gpu: GPUProfile
    fits: bool
    required_bytes: int  # the device total of the estimate
    capacity_bytes: int  # what CUDA can allocate on this GPU
    headroom_bytes: int  # capacity - required; negative: the shortfall
    host_required_bytes: int = 0  # host memory the run needs (--offload)
    host_capacity_bytes: int | None = None  # the host RAM given (--host-ram); None: not checked

    @property
    def host_fits(self) -> bool:
        return self.host_capacity_bytes is None or self.host_required_bytes <= self.host_capacity_bytes

    def to_dict(self) -> dict:
        out = {"gpu": self.gpu.id, "gpu_name": self.gpu.name, "fits": self.fits,
               "required_bytes": self.required_bytes, "capacity_bytes": self.capacity_bytes,
               "headroom_bytes": self.headroom_bytes}
        if self.host_required_bytes or self.host_capacity_bytes is not None:
            out.update(host_required_bytes=self.host_required_bytes, host_capacity_bytes=self.host_capacity_bytes,
                       host_fits=self.host_fits)
        return out


def capacity_bytes(gpu: GPUProfile) -> int:
    if gpu.usable_mib:
        return gpu.usable_mib * MiB
    return int(gpu.memory_mib * MiB * (1 - UNKNOWN_USABLE_MARGIN))


@dataclass(frozen=True)
class Estimate:
    """Memory of one training step: bytes per category at each phase, the overhead and the counts."""

    config: TrainingConfig
    phases: dict  # {phase: {category: bytes}}, allocated categories (no overhead)
    overhead: int  # CUDA context + allocator fragmentation
    parameter_count: int
    trainable_count: int
    gpu: GPUProfile | None = None
    sharded_step_temp: bool = False  # the step's transients span all states (foreach): ZeRO shards them too
    host_bytes: int = 0  # host memory of an offloaded run (--offload): pinned copies + optimizer state
    host_pinned_bytes: int = 0  # of which pinned (page-locked) weight and gradient copies
    terms: StepTerms | None = field(default=None, compare=False, repr=False)  # what the phases were composed of
    acts: Activations | None = field(default=None, compare=False, repr=False)  # (memplan/parallel.py recomposes them)

    def __getattr__(self, name):
        # an estimate made by estimate_config builds `phases` on first use, from the four moments
        # (gradients, activations, temporaries) it was composed of: a sweep or a search that reads
        # only totals and fits skips four dicts (1.8 us of a 12 us estimate)
        if name == "phases" and "_moments" in self.__dict__:
            phases = self.__dict__["phases"] = phases_of(self.terms, self.__dict__["_moments"])
            return phases
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def impl(self):
        """The implementation record the estimate models (memplan.impls.Impl)."""
        from memplan.impls import get_impl

        return get_impl(self.config.method, impl_name(self.config))

    @property
    def knobs(self):
        """The optimizer options in effect (momentum, beta1), defaults resolved."""
        from memplan.impls import knobs

        return knobs(self.impl, self.config.momentum, self.config.beta1)

    @property
    def model_knobs(self) -> dict:
        """The model settings the activations follow, dropouts resolved from the model config."""
        c = self.config
        return {"attn": c.attn, "attn_dropout": c.model.attention_dropout if c.attn_dropout is None else c.attn_dropout,
                # the LLaMA-family classes (LLaMA, Mistral, Mixtral) have no dropout on the residual stream
                "hidden_dropout": None if c.model.family == "llama" else
                (c.model.hidden_dropout if c.hidden_dropout is None else c.hidden_dropout),
                "lora_dropout": c.lora_dropout, "kernels": c.kernels}

    @cached_property
    def _peak(self) -> tuple[str, int]:
        """(phase, allocated bytes) at the peak, once per estimate: its phases are not changed after."""
        totals = [sum(self.phases[p].values()) for p in PHASES]
        top = max(totals)
        return PHASES[totals.index(top)], top

    @property
    def peak_phase(self) -> str:
        """The phase with the most allocated bytes (the earliest of equal ones)."""
        return self._peak[0]

    @property
    def peak_bytes(self) -> int:
        """Allocated bytes at the peak: what the tensors hold."""
        return self._peak[1]

    @property
    def gradient_peak_bytes(self) -> int:
        """The most gradient bytes alive at once: all gradients at the end of backward, or, when
        each is consumed as soon as it is complete (per-layer update, offloaded gradients), the
        largest one (its moment need not be a phase's peak)."""
        most = max(p.get("gradients", 0) for p in self.phases.values())
        if self.terms is not None and self.terms.layerwise:
            most = max(most, self.terms.largest_gradient)
        return most

    @property
    def device_total_bytes(self) -> int:
        """What the GPU must have: the allocated peak plus CUDA context and fragmentation."""
        return self._peak[1] + self.overhead

    @property
    def reserved_bytes(self) -> int:
        """Predicted max_memory_reserved: the allocated peak, cuBLAS workspaces and fragmentation."""
        return self.device_total_bytes - context_bytes(self.gpu)

    @property
    def breakdown(self) -> dict[str, int]:
        return {**self.phases[self.peak_phase], "overhead": self.overhead}

    def fit(self, gpu: "str | GPUProfile | None" = None, gpu_file=None, host_ram: int | None = None) -> Fit:
        """The fit on `gpu`; `host_ram` (bytes): also check the host memory an offloaded run needs."""
        g = load_gpu(gpu, gpu_file) if gpu is not None else self.gpu
        if g is None:
            raise MemplanError("No GPU given: pass a GPU id such as 'rtx-4090' (see 'memplan gpus').")
        cap = capacity_bytes(g)
        need = self.device_total_bytes
        if g is not self.gpu:  # g's context and workspaces instead of the estimate's GPU's
            need += outside_tensors(g) - outside_tensors(self.gpu)
        host_ok = host_ram is None or self.host_bytes <= host_ram
        return records.new(Fit, {"gpu": g, "fits": need <= cap and host_ok, "required_bytes": need,
                                 "capacity_bytes": cap, "headroom_bytes": cap - need,
                                 "host_required_bytes": self.host_bytes, "host_capacity_bytes": host_ram},
                           defaults=False)

    def to_dict(self) -> dict:
        c = self.config
        cfg = {k: v for k, v in asdict(c).items() if k != "model"}
        cfg["model"] = c.model.name
        cfg["target_modules"] = list(resolve_targets(c.model, c.target_modules))
        impl, kn = self.impl, self.knobs
        cfg.update(impl=impl.name, momentum=kn.momentum, beta1=kn.beta1, weights=weight_format(c))
        cfg.update(self.model_knobs)
        out = {
            "config": cfg,
            "impl": impl.name,
            "impl_library": impl.library,
            "parameter_count": self.parameter_count,
            "trainable_count": self.trainable_count,
            "breakdown": self.breakdown,
            "phases": {p: {**v, "allocated": sum(v.values())} for p, v in self.phases.items()},
            "peak_phase": self.peak_phase,
            "peak_allocated_bytes": self.peak_bytes,
            "host_bytes": self.host_bytes,
            "host_pinned_bytes": self.host_pinned_bytes,
            "device_total_bytes": self.device_total_bytes,
            "reserved_bytes": self.reserved_bytes,  # predicted max_memory_reserved (memplan/reserve.py)
            "units": "bytes",
        }
        if self.gpu is not None:
            out["fit"] = self.fit().to_dict()
        return out


@lru_cache(maxsize=4096)
def _step_terms(model: ModelProfile, targets, method_name: str, impl_name_: str, kn, wfmt: str, precision: str,
                r: int, train_other: bool, layerwise: bool, offload_mode: str) -> tuple:
    """What a step holds and allocates that does not depend on the batch or the sequence: bytes of
    parameters, gradients, states, projectors and host copies, the parameter counts, the largest and
    first gradients and the step and refresh transients. Cached: sweeps, the planner's searches and
    the dashboard ask for the same terms with many batch sizes and sequence lengths. Keyed by the
    method's and implementation's names: hashing the records themselves costs more than the lookup."""
    from memplan.impls import get_impl

    method, impl = METHODS[method_name], get_impl(method_name, impl_name_)
    prec = PRECISIONS[precision]
    tensors = _tensors(model, targets, method, r, train_other)

    params = grads = states = projs = host = pinned = 0
    n_params = n_trainable = 0
    largest_grad = first_grad = first_step_temp = step_temp = tied_grad = refresh_grad = cast_weights = 0
    quantized_weights = wfmt != "bf16"  # int8 / nf4 block linears: their own kernels, no autocast cast
    dequant = (0, 0)  # NF4: (bytes, input width) of the largest base weight dequantized in backward
    refresh_temp = None
    n_quantized = 0
    for shape, role, n, trainable in tensors:
        numel = shape.numel
        own = impl.adapter_bytes if role == "adapter" and impl.adapter_bytes else None  # peft: fp32 adapters
        pb, gb = (own, own) if own else (prec.param, prec.grad)
        s = gb  # optimizer state follows the gradient dtype
        n_params += n * numel
        if wfmt != "bf16" and shape.matrix and role in ("attention", "mlp"):  # quantized block linears
            params += n * weight_bytes(wfmt, numel, pb)
            if wfmt == "nf4":  # dequantize_4bit gives the weight's own dtype, then .to() the gradient's
                cast = numel * prec.compute if prec.compute != pb else 0
                width = shape.n if model.family != "gpt2" else shape.m
                dequant = max(dequant, (numel * pb + cast, width))
        else:
            params += n * numel * pb
        if not trainable:
            continue
        n_trainable += n * numel
        grads += n * numel * gb
        if prec.compute < prec.param and role in ("attention", "mlp", "adapter", "expert") and not quantized_weights:
            # mixed precision: autocast's cache keeps the compute-dtype copy of each trainable weight a
            # block's linear casts until the autocast region (the forward) ends
            cast_weights += n * numel * prec.compute
        if role == "expert":  # one 3-D parameter holds all E experts: n counts experts, the rules see it whole
            E = model.num_local_experts
            col = shape.n
            shape, n = Shape(shape.m * E, shape.n, False), n // E
            numel = shape.numel
        st, pj = impl.state(shape, r, s, kn)
        if role == "expert" and method.name == "adafactor":
            st += (E - 1) * col * 4  # Adafactor factors over the last two dims: a column factor per expert
        largest_grad = max(largest_grad, numel * gb)
        if (role == "adapter") if method.adapter else shape.projected:  # what a refresh works on
            refresh_grad = max(refresh_grad, numel * gb)
        if offload.offloaded(offload_mode, numel):  # state and CPU step on the host (memplan/offload.py)
            h, pin = offload.host_bytes(numel, pb, gb, st + pj)
            host, pinned = host + n * h, pinned + n * pin
            if offload_mode == "optimizer+gradients":
                grads -= n * numel * gb  # dropped from the device once copied: only one in flight
            continue
        states += n * st
        projs += n * pj
        if role == "embedding" and model.tie_word_embeddings:
            tied_grad = numel * gb
        if role == "head" or (role == "embedding" and model.tie_word_embeddings and model.is_decoder):
            first_grad = max(first_grad, numel * gb)
            first_step_temp = max(first_step_temp, impl.step_temp(shape, r, s, kn))
        step_temp = max(step_temp, impl.step_temp(shape, r, s, kn))
        low_rank = shape.projected and method.uses_rank and not method.adapter  # state of the r x K projection
        if method.eightbit and quantized(r * shape.K if low_rank else numel):
            n_quantized += n
    # the gradients not made yet at the first block's backward peak (in its MLP, once the MLP's output
    # linear has made its gradients): the rest of the block's and the embeddings'
    before, block, _after = block_order(model, targets)
    last = max((i for i, spec in enumerate(block) if len(spec.shape) >= 2), default=len(block))
    adapter_b = impl.adapter_bytes or prec.grad

    def grad_bytes(specs) -> int:
        return sum(t.numel * (adapter_b if adapter else prec.grad) for t, adapter in _entries(specs, method, r,
                                                                                             train_other))
    unmade, tail = grad_bytes(before + block[:last]), grad_bytes(block[last:])
    if impl.refresh_temp is not None:  # one projected (or, for ReLoRA, adapted) weight at a time
        refresh_temp = max(impl.refresh_temp(shape, r, prec.grad, kn) for shape, _, _ in _groups(model, targets)
                           if shape.projected)
    if (impl.sequence_temp or impl.sequence_refresh) and not layerwise and offload_mode == "none":
        order = _step_order(model, targets, method, r, train_other, impl.regular_first)
        seq_step, seq_refresh = _sequence_temps(impl, order, r, prec.grad, kn)
        if impl.sequence_temp:
            step_temp = seq_step
        if impl.sequence_refresh:
            refresh_temp = seq_refresh
    if n_quantized:  # shared quantization maps: once, or once per optimizer (bitsandbytes per layer)
        states += QMAP_BYTES * (n_quantized if layerwise and impl.qmaps_per_optimizer else 1)
    return (params, grads, states, projs, host, pinned, n_params, n_trainable, largest_grad, first_grad,
            first_step_temp, step_temp, tied_grad, refresh_temp, dequant, unmade, tail, refresh_grad, cast_weights)


def _static_part(c: TrainingConfig) -> tuple:
    """What an estimate of `c` takes from everything but the batch size and the sequence length:
    the method, implementation and precision records, the step's terms, the adapted inputs, the
    model knobs and the counts. A sweep or a search over batch and sequence asks for it again and
    again: estimate_config keeps it per set of those fields (_STATIC)."""
    from memplan.impls import get_impl, knobs

    method = METHODS[get_method(c.method).name]
    impl = get_impl(method.name, impl_name(c))
    kn = knobs(impl, c.momentum, c.beta1)
    targets = resolve_targets(c.model, c.target_modules)
    train_other = method.train_non_target if c.train_non_target is None else c.train_non_target
    r = c.rank if method.uses_rank else 0
    (params, grads, states, projs, host, pinned, n_params, n_trainable, largest_grad, first_grad, first_step_temp,
     step_temp, tied_grad, refresh_temp, dequant, unmade, tail, refresh_grad, cast_weights) = _step_terms(
        c.model, targets, method.name, impl.name, kn, weight_format(c), c.precision, r, train_other, c.layerwise,
        c.offload)
    adapted = _adapted_inputs(c.model, targets) if method.adapter else ()
    # offloaded gradients leave the device one at a time, as with the per-layer update
    per_tensor_grads = c.layerwise or c.offload == "optimizer+gradients"
    terms = StepTerms(params, grads, first_grad, first_step_temp, largest_grad, states, projs, step_temp, refresh_temp,
                      per_tensor_grads, c.checkpointing, frozen_non_target=bool(method.adapter) and not train_other,
                      tied_gradient=tied_grad, dequant_weight=dequant[0], dequant_width=dequant[1],
                      unmade_at_first_block=min(unmade, grads), block_tail_gradient=min(tail, grads),
                      refresh_gradient=refresh_grad if refresh_temp is not None else 0,
                      autocast_cache=cast_weights)
    prec = PRECISIONS[c.precision]
    model_kn = knobs_of(c, impl.adapter_bytes or 0, frozen_other=not train_other, base_weights=method.adapter != "lowrank")
    return (method, prec, r, adapted, model_kn, train_other, terms, n_params, n_trainable, host, pinned,
            impl.shards_with_states and not c.layerwise, _acts_token(c.model, prec, r, adapted, model_kn))


# Activations per (token, batch, sequence): the token stands for the model and the other inputs of
# activations(), the same for many methods (a sweep's), and an int hashes in one step where their
# tuple (the adapted inputs, the knobs) is hashed anew on each lookup. A table that fills starts again.
_ACTS: dict = {}
_ACTS_TOKENS: dict = {}
_TOKENS = itertools.count()


def _acts_token(model: ModelProfile, prec: Precision, r: int, adapted: tuple, kn: Knobs) -> int:
    inputs = (model, prec.compute, prec.param, r, adapted, kn)
    token = _ACTS_TOKENS.get(inputs)
    if token is None:  # new tokens after a clear: entries under old ones are never read again
        if len(_ACTS_TOKENS) >= _STATIC_SIZE:
            _ACTS_TOKENS.clear()
        token = _ACTS_TOKENS[inputs] = next(_TOKENS)
    return token


def estimate_config(c: TrainingConfig, gpu: GPUProfile | None = None) -> Estimate:
    static = c.__dict__.get("_static")  # what check_config found in _STATIC
    if static is None:
        static = _static_part(c)
        key = c.__dict__.get("_fields_key")
        if key is not None:  # (None: an unhashable field, not kept)
            if len(_STATIC) >= _STATIC_SIZE:
                _STATIC.clear()
            _STATIC[key] = c.__dict__["_static"] = static
    method, prec, r, adapted, kn, train_other, terms, n_params, n_trainable, host, pinned, sharded, token = static

    acts_key = (token, c.batch_size, c.seq_len)
    acts = _ACTS.get(acts_key)
    if acts is None:
        acts = activations(c.model, c.batch_size, c.seq_len, prec.compute, prec.param, r, adapted, kn)
        if len(_ACTS) >= _STATIC_SIZE:
            _ACTS.clear()
        _ACTS[acts_key] = acts
    if c.loss == "fused-chunked":
        from memplan.loss import fused_chunked

        head = c.model.vocab_size * c.model.hidden_size * prec.param if (train_other or not method.adapter) else 0
        acts = fused_chunked(acts, c.batch_size * c.seq_len, c.model.hidden_size, c.model.vocab_size, prec.compute,
                             head, c.loss_chunk, frozen_outside=bool(method.adapter) and not train_other)
    m, i, top = moments_and_peak(terms, acts)
    grads = max(m[1][0], m[2][0], m[3][0])  # (the forward holds none)
    if terms.layerwise:
        grads = max(grads, terms.largest_gradient)
    overhead = outside_tensors(gpu) + fragmentation(grads, m[0][1], acts.block if c.checkpointing else 0,
                                                    terms.gradients if c.layerwise else 0)
    peak = PHASES[i], top + terms.parameters + terms.optimizer_states + terms.projectors
    return records.new(Estimate, {"config": c, "_moments": m, "overhead": overhead, "parameter_count": n_params,
                                  "trainable_count": n_trainable, "gpu": gpu, "sharded_step_temp": sharded,
                                  "host_bytes": host, "host_pinned_bytes": pinned, "terms": terms, "acts": acts,
                                  "_peak": peak}, defaults=False)  # Estimate._peak, known here


_FIELDS = frozenset(TrainingConfig.__dataclass_fields__)


def make_config(model, method: str | None = None, **options) -> TrainingConfig:
    """A TrainingConfig from a model spec and options, or from a config with some fields changed.

    `model`: profile name, config.json path, ModelProfile, or a TrainingConfig (then `method` and
    `options` override its fields). Options are TrainingConfig's fields; they are validated.
    """
    if isinstance(model, TrainingConfig):
        if method is not None:
            options["method"] = get_method(method).name
        return _changed(model, options) if options else model
    return _new_config(model, method, options)


def _unknown_options(options: dict) -> MemplanError:
    unknown_opts = options.keys() - _FIELDS
    return MemplanError(f"Unknown option(s) {', '.join(sorted(unknown_opts))}. "
                        f"Allowed: {', '.join(f for f in TrainingConfig.__dataclass_fields__ if f != 'model')}.")


def _changed(c: TrainingConfig, changes: dict) -> TrainingConfig:
    """dataclasses.replace(c, **changes), made as _new_config makes a config (one dict, then the same
    checks): the planner's bisections and the sweeps change a field or two of one config thousands
    of times, and replace() sets all 23 fields one at a time again (benchmarks/estimate_speed.py's
    planner path: 55,100 estimates/s with replace(), 91,800/s with this)."""
    if not _FIELDS.issuperset(changes):
        raise _unknown_options(changes)
    values = c.__dict__.copy()
    values.pop("_fields_key", None)  # check_config's, for `c`'s fields (an unpickled config has none)
    values.pop("_static", None)
    values.update(changes)
    new = records.new(TrainingConfig, values, defaults=False)
    check_config(new)
    return new


def _new_config(model, method: str | None, options: dict) -> TrainingConfig:
    """make_config from a model spec, taking `options` (a dict it may change) as they are."""
    profile = model if type(model) is ModelProfile else load_model(model)
    if not _FIELDS.issuperset(options):
        raise _unknown_options(options)
    if isinstance(options.get("target_modules"), (str, list)):
        options["target_modules"] = resolve_targets(profile, options["target_modules"])
    # TrainingConfig(...) would set its 23 fields one object.__setattr__ at a time (2.6 us of a 10 us
    # estimate): the same fields and defaults, filled at once, then the same checks
    options["model"], options["method"] = profile, get_method("adamw" if method is None else method).name
    c = records.new(TrainingConfig, options)
    check_config(c)
    return c


def estimate(model, method: str = "adamw", *, gpu=None, gpu_file=None, **options) -> Estimate:
    """Estimate one training step. `model`: profile name, config.json path or ModelProfile.

    Options are the fields of `TrainingConfig` (rank, update_gap, target_modules,
    precision, batch_size, seq_len, layerwise, checkpointing, train_non_target, impl,
    momentum, beta1). `impl` names the code that runs the method (`memplan methods`
    lists them; None: the method's default, e.g. torch's foreach AdamW).
    """
    config = make_config(model, method, **options) if isinstance(model, TrainingConfig) else \
        _new_config(model, method, options)
    return estimate_config(config, load_gpu(gpu, gpu_file) if gpu is not None else None)
