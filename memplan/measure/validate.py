"""Build a model and optimizer for an estimator configuration, measure real (or
fake) training steps, and compare them with the estimate.

The measured steps (update gap set to 2, so that steps 0 and 2 refresh):
step 0 (warm-up: creates the optimizer state and the first projectors, not
reported), step 1 (an ordinary step: ``forward``, ``backward``,
``optimizer_step``) and step 2 (a projection refresh; its optimizer phase, or its
backward with the per-layer update, where the refresh happens, is
``refresh_step``). ReLoRA's refresh is the merge of ``B A`` into the base weight.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field

import torch

from memplan.measure.step import measure_step
from memplan.measure.tracker import CATEGORIES, PHASES

__all__ = ["ValidateConfig", "Validation", "measure_config", "validate", "EXACT", "PEAK_TOLERANCE"]

EXACT = ("parameters", "gradients", "optimizer_states", "projectors")  # must match to the byte
PEAK_TOLERANCE = 0.01  # |measured - estimated| / measured for the peak allocated bytes
SHARE_TOLERANCE = 0.01  # activations and transients at the peak: |estimated - measured| / measured peak
PHASE_TIE = 0.001  # phases within 0.1% of the measured peak count as "the peak phase"
DEVICES = ("cpu", "fake", "cuda")
UPDATE_GAP = 2


@dataclass
class ValidateConfig:
    model: str = "llama-60m"
    method: str = "galore"
    rank: int = 128
    precision: str = "bf16"
    batch_size: int = 4
    seq_len: int = 256
    layerwise: bool = False
    checkpointing: bool = False
    device: str = "cpu"  # cpu | fake | cuda
    implementation: str = "auto"  # hf (the family's transformers class) | bundled (memplan's LLaMA) | auto
    target_modules: tuple[str, ...] | None = None
    seed: int = 0
    impl: str | None = None  # optimizer implementation (memplan.impls); None: the bundled optimizers
    momentum: float | None = None  # SGD momentum (None: 0.9 for the bundled build, else torch's 0)
    beta1: float | str | None = None  # Adafactor beta1 (None: the implementation's default)
    attn: str = "sdpa"  # sdpa | eager (the HF model's attention implementation)
    attn_dropout: float | None = None  # None: the model config's
    hidden_dropout: float | None = None  # None: the model config's
    lora_dropout: float = 0.0

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"Unknown device {self.device!r}; expected one of {', '.join(DEVICES)}")
        if self.implementation == "auto":
            self.implementation = default_implementation(self.model)
        if self.implementation not in ("bundled", "hf"):
            raise ValueError(f"Unknown implementation {self.implementation!r}; expected 'bundled' or 'hf'")
        if self.implementation == "bundled":
            check_bundled(self)
        self.impl = runnable_impl(get_method_name(self.method), self.impl)
        if self.impl == "peft-bitsandbytes" and self.device == "fake":
            raise ValueError("QLoRA's NF4 quantization reads the weights' values: it has no fake-tensor run. "
                             "Use --device cpu (a small model) or --device cuda.")

    @property
    def resolved_impl(self) -> str:
        """The implementation measured: `impl`, or the record of the bundled build."""
        from memplan.methods import get_method
        method = get_method(self.method).name
        return self.impl or BUNDLED_AS.get(method, "bundled")

    @property
    def resolved_momentum(self) -> float | None:
        if self.momentum is None and self.impl is None and get_method_name(self.method) == "sgd":
            return 0.9  # the bundled build's SGD momentum
        return self.momentum

    def estimator_options(self) -> dict:
        from memplan.methods import get_method
        opts = dict(update_gap=UPDATE_GAP, precision=self.precision, batch_size=self.batch_size,
                    seq_len=self.seq_len, layerwise=self.layerwise, checkpointing=self.checkpointing,
                    target_modules=self.target_modules, impl=self.resolved_impl,
                    momentum=self.resolved_momentum, beta1=self.beta1, attn=self.attn,
                    attn_dropout=self.attn_dropout, hidden_dropout=self.hidden_dropout,
                    lora_dropout=self.lora_dropout, kernels="cuda" if self.device == "cuda" else "cpu")
        if self.implementation == "bundled":  # memplan's LLaMA: SDPA, no dropout
            opts.update(attn="sdpa", attn_dropout=0.0, hidden_dropout=0.0)
        if get_method(self.method).uses_rank:
            opts["rank"] = self.rank
        return opts


# the bundled build (memplan.optim.build) runs these for the plain baselines
BUNDLED_AS = {"adamw": "torch-forloop", "sgd": "torch"}

# implementations that run on weights validate's model builders do not make
NOT_BUILT = {
    "q-galore-torch": "Q-GaLore's INT8 QLinear lives in the authors' repository, not in the package "
                      "(--impl q-galore-torch-bf16 runs its optimizer on bf16 weights)",
    "q-apollo": "QAPOLLOAdamW steps INT8 weights, which validate's model builders do not make "
                "(--impl apollo-torch runs APOLLO on bf16 weights)",
}


def runnable_impl(method: str, impl: str | None) -> str | None:
    """The implementation validate runs for `method`: `impl`, or for a method without a bundled
    optimizer its default library; ValueError, in one line, for one that cannot run here."""
    from memplan.impls import default_impl, get_impl, impls_of
    from memplan.measure.libs import uses_library

    if impl is None:
        if BUNDLED_AS.get(method, "bundled") in impls_of(method):
            return None  # the bundled optimizer
        impl = default_impl(method)
    record = get_impl(method, impl)  # an unknown name: MemplanError, with the allowed ones
    if record.name != "bundled" and not uses_library(record.name):
        why = NOT_BUILT.get(record.name, "validate has no builder for it")
        raise ValueError(f"memplan validate cannot run {method} with {record.name} here: {why}. Its rules are "
                         f"checked by {record.checked_by}.")
    return record.name


def get_method_name(name: str) -> str:
    from memplan.methods import get_method
    return get_method(name).name


@dataclass
class Validation:
    config: ValidateConfig
    estimate: dict
    measured: dict
    error: dict
    passed: bool
    seconds: float
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        cfg = asdict(self.config)
        if isinstance(cfg["model"], dict):  # a ModelProfile: report its name
            cfg["model"] = cfg["model"]["name"]
        cfg["target_modules"] = list(cfg["target_modules"]) if cfg["target_modules"] else None
        return {"config": cfg, "estimate": self.estimate, "measured": self.measured, "error": self.error,
                "passed": self.passed, "failures": self.failures, "seconds": round(self.seconds, 2)}


# --------------------------------------------------------------------------- build
def default_implementation(model) -> str:
    """``hf`` where transformers is installed and has the profile's class, else ``bundled``."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "bundled"
    from memplan.models.hf import hf_class_name
    return "hf" if hf_class_name(_profile(model)) else "bundled"


def check_bundled(cfg) -> None:
    """The bundled model is a LLaMA decoder with SDPA and no dropout: refuse anything else
    (measuring it for another family would report a false error)."""
    p = _profile(cfg.model)
    if p.family != "llama":
        raise ValueError(f"The bundled model is LLaMA-style; {p.name} is a {p.model_type} model. "
                         "Measure it with the Hugging Face class (--hf, needs transformers).")
    if p.attention_bias or p.qkv_bias or p.mlp_bias:
        raise ValueError(f"The bundled model has no biases; {p.name} has them. "
                         "Measure it with the Hugging Face class (--hf, needs transformers).")
    if cfg.attn != "sdpa" or cfg.attn_dropout or cfg.hidden_dropout:
        raise ValueError("The bundled model has SDPA attention and no dropout; use --hf for --attn eager "
                         "or dropout.")


_DTYPE = {"bf16": torch.bfloat16, "mixed": torch.float32, "fp32": torch.float32}


def _profile(name):
    from memplan.profiles import load_model
    return load_model(name)


def build(cfg: ValidateConfig):
    """(model, optimizer, batch, autocast dtype) for ``cfg``, on the current device/mode."""
    from memplan.methods import get_method
    from memplan.optim import build_optimizer

    method = get_method(cfg.method)
    profile = _profile(cfg.model)
    dtype = _DTYPE[cfg.precision]
    device = "cuda" if cfg.device == "cuda" else "cpu"
    torch.manual_seed(cfg.seed)
    if cfg.implementation == "hf":
        from memplan.models.hf import build_hf_model
        model = build_hf_model(profile, dtype=dtype, device=device, checkpointing=cfg.checkpointing,
                               attn_implementation=cfg.attn, attn_dropout=cfg.attn_dropout,
                               hidden_dropout=cfg.hidden_dropout)
    else:
        from memplan.models import build_model
        model = build_model(profile, dtype=dtype, device=device, checkpointing=cfg.checkpointing)
    model.train()
    impl = cfg.resolved_impl
    from memplan.inventory import resolve_targets
    targets = resolve_targets(profile, cfg.target_modules)
    if impl in ("peft", "peft-bitsandbytes"):
        from memplan.measure.libs import apply_peft_lora, quantize_nf4
        if impl == "peft-bitsandbytes":  # QLoRA: NF4 base linears under the adapters
            quantize_nf4(model, targets, compute_dtype=torch.bfloat16 if cfg.precision == "mixed" else dtype)
        model = apply_peft_lora(model, cfg.rank, targets, train_non_target=False, lora_dropout=cfg.lora_dropout)
    elif method.adapter:
        from memplan.models import apply_lora
        apply_lora(model, cfg.rank, kind=cfg.method, target_modules=targets,
                   train_non_target=method.train_non_target)
    from memplan.measure.libs import build_library_optimizer, uses_library
    if uses_library(impl) and not (impl == "torch-forloop" and cfg.impl is None) and \
            not (impl == "torch" and cfg.impl is None):
        beta1 = "default" if cfg.beta1 is None else (None if cfg.beta1 == "none" else cfg.beta1)
        opt = build_library_optimizer(model, impl, method.name, rank=cfg.rank, update_gap=UPDATE_GAP,
                                      layerwise=cfg.layerwise, target_modules=cfg.target_modules,
                                      momentum=cfg.momentum, beta1=beta1)
    else:
        opt = build_optimizer(model, method.name, rank=cfg.rank, update_gap=UPDATE_GAP, layerwise=cfg.layerwise,
                              target_modules=cfg.target_modules, total_steps=3)
    ids = torch.randint(0, profile.vocab_size, (cfg.batch_size, cfg.seq_len), device=device)
    batch = {"input_ids": ids, "labels": ids.clone()}
    return model, opt, batch, (torch.bfloat16 if cfg.precision == "mixed" else None)


def _loss(model, batch):
    out = model(**batch)
    return out.loss if hasattr(out, "loss") else out


# --------------------------------------------------------------------------- measure
def measure_config(cfg: ValidateConfig, progress=None, snapshot=None, reserved: bool = False) -> dict:
    """Measured phases and exact category totals of ``cfg`` (see the module doc).

    ``snapshot``: a file to write the CUDA memory snapshot to (``--device cuda``).
    ``reserved``: record every storage allocation and free of the three steps and
    replay them through memplan's CUDA caching-allocator model (``out["reserved"]``).
    """
    fake = cfg.device == "fake"
    if cfg.device == "cuda" and not torch.cuda.is_available():  # checked before anything is built
        raise RuntimeError("--device cuda needs a CUDA GPU; none is visible. Use --device cpu or --device fake.")
    import memplan.models  # noqa: F401  (import outside the fake mode: module-level tensors stay real)
    import memplan.optim  # noqa: F401
    mode = _fake_mode() if fake else contextlib.nullcontext()
    real_masks = _one_sequence_per_row() if fake and cfg.implementation == "hf" else contextlib.nullcontext()
    # one thread on the CPU: MKL's SVD is 4x slower with two threads than with one here
    threads = torch.get_num_threads()
    if cfg.device == "cpu":
        torch.set_num_threads(1)
    try:
        if snapshot is not None and cfg.device != "cuda":
            raise ValueError("--snapshot needs --device cuda (the snapshot is the CUDA allocator's history)")
        from memplan.measure.snapshot import record
        with mode, real_masks, record(snapshot if cfg.device == "cuda" else None):
            return _measure(cfg, progress, reserved)
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: ValidateConfig, progress, reserved: bool = False) -> dict:
    from memplan.measure.tracker import AllocationLog
    log = AllocationLog() if reserved else None
    if True:
        model, opt, batch, amp = build(cfg)
        merge = None
        if cfg.method == "relora":
            from memplan.models.lora import merge_lora
            merge = lambda tracker: merge_lora(model)  # noqa: E731
        runs = []
        for step in range(3):
            refresh = step % UPDATE_GAP == 0
            runs.append(measure_step(model, opt, batch, _loss, autocast_dtype=amp,
                                     after_step=merge if refresh and step > 0 else None, alloc_log=log))
            if progress is not None:
                progress(1)
    normal, refresh = runs[1], runs[2]
    phases = {p: dict(normal.phases[p]) for p in ("forward", "backward", "optimizer_step")}
    stepping = "backward" if cfg.layerwise else "optimizer_step"
    phases["refresh_step"] = dict(refresh.phases[stepping])
    persistent = dict(normal.persistent)
    persistent["gradients"] = max(normal.persistent["gradients"], refresh.persistent["gradients"])
    out = {"phases": phases, "persistent": persistent, "saved_activations": normal.saved}
    if normal.cuda:
        out["cuda"] = _cuda_summary(normal, refresh, stepping)
    if log is not None:
        from memplan.replay import replay_log
        del model, opt, batch, runs, normal, refresh
        out["reserved"] = replay_log(log.events)
    return out


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode(allow_non_fake_inputs=False)


@contextlib.contextmanager
def _one_sequence_per_row():
    """Under FakeTensorMode, transformers cannot read the position ids (``is_tracing`` is true for
    fake tensors), so ``create_causal_mask`` assumes packed sequences and hands SDPA a (b, 1, s, s)
    mask that each layer saves. On real tensors it finds one sequence per row and passes no mask
    (``is_causal``; the flash kernel on CUDA). Answer as real tensors do, for the fake measurement only."""
    try:
        import transformers.masking_utils as mu
    except ImportError:
        yield
        return
    orig = mu.find_packed_sequence_indices
    mu.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        mu.find_packed_sequence_indices = orig


def _cuda_summary(normal, refresh, stepping) -> dict:
    c = {p: dict(normal.cuda.get(p, {})) for p in ("forward", "backward", "optimizer_step")}
    c["refresh_step"] = dict(refresh.cuda.get(stepping, {}))
    out = {"phases": c,
           "max_allocated": max(v.get("allocated", 0) for v in c.values()),
           "max_reserved": max(v.get("reserved", 0) for v in c.values())}
    out.update(_nvml_used())
    return out


def _nvml_used() -> dict:
    """Device memory in use as NVML (nvidia-smi) reports it, context included; {} without NVML."""
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            idx = torch.cuda.current_device()
            h = pynvml.nvmlDeviceGetHandleByIndex(idx)
            info = pynvml.nvmlDeviceGetMemoryInfo(h)
            return {"nvml_used": int(info.used), "nvml_total": int(info.total)}
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or no permission: report what torch knows
        return {}


# --------------------------------------------------------------------------- compare
def _peak_phase(phases: dict) -> str:
    return max(PHASES, key=lambda p: (phases[p]["total"], -PHASES.index(p)))


def summarize_measured(m: dict) -> dict:
    phases = m["phases"]
    peak = _peak_phase(phases)
    cats = {c: phases[peak].get(c, 0) for c in CATEGORIES}
    cats.update(m["persistent"])
    out = {"phases": phases, "peak_phase": peak, "peak_bytes": phases[peak]["total"], "categories": cats,
           "saved_activations": m.get("saved_activations", 0)}
    for key in ("cuda", "reserved"):
        if key in m:
            out[key] = m[key]
    return out


def summarize_estimate(est) -> dict:
    phases = {p: {**{c: v.get(c, 0) for c in CATEGORIES}, "total": sum(v.values())}
              for p, v in est.phases.items()}
    peak = est.peak_phase
    cats = {c: phases[peak][c] for c in CATEGORIES}
    cats["gradients"] = est.gradient_peak_bytes
    cats["overhead"] = est.overhead
    return {"phases": phases, "peak_phase": peak, "peak_bytes": est.peak_bytes, "categories": cats,
            "device_total_bytes": est.device_total_bytes}


def _rel(measured: int, estimated: int) -> float:
    if measured == 0:
        return 0.0 if estimated == 0 else 1.0
    return (estimated - measured) / measured


def peak_shares(estimate: dict, measured: dict) -> dict:
    """Activations and transients at each side's peak, error as a share of the measured peak.

    Transients are the gradients and temporaries alive at the peak together: during backward
    the gradient being produced is a temporary until autograd assigns it to `.grad`, and a
    state tensor a step creates is one until the step returns, so the split between them at
    one moment is the tracker's, not the memory's (gradients alone are checked exactly, as
    the most alive at once).
    """
    ep, mp = estimate["phases"][estimate["peak_phase"]], measured["phases"][measured["peak_phase"]]
    top = max(1, measured["peak_bytes"])
    trans_e = ep["gradients"] + ep["temporaries"] + ep["optimizer_states"] + ep["projectors"]
    trans_m = mp["gradients"] + mp["temporaries"] + mp["optimizer_states"] + mp["projectors"]
    states_e = estimate["categories"]["optimizer_states"] + estimate["categories"]["projectors"]
    states_m = measured["categories"]["optimizer_states"] + measured["categories"]["projectors"]
    return {"activations": (ep["activations"] - mp["activations"]) / top,
            "transients": ((trans_e - states_e) - (trans_m - states_m)) / top}


def compare(estimate: dict, measured: dict) -> tuple[dict, list[str]]:
    """Error of each category, of each phase's total and of the peak (estimate - measured)."""
    cats = {}
    for c in CATEGORIES:
        if c == "overhead":  # the estimate's CUDA context is not a tensor the trackers see
            continue
        e, m = estimate["categories"][c], measured["categories"][c]
        cats[c] = {"bytes": e - m, "relative": round(_rel(m, e), 6)}
    phases = {p: round(_rel(measured["phases"][p]["total"], estimate["phases"][p]["total"]), 6) for p in PHASES}
    mp = measured["phases"]
    top = mp[measured["peak_phase"]]["total"]
    phase_ok = mp[estimate["peak_phase"]]["total"] >= (1 - PHASE_TIE) * top
    err = {"categories": cats, "phases": phases,
           "peak": {"bytes": estimate["peak_bytes"] - measured["peak_bytes"],
                    "relative": round(_rel(measured["peak_bytes"], estimate["peak_bytes"]), 6)},
           "peak_phase_match": phase_ok}
    failures = [f"{c}: estimate - measured = {cats[c]['bytes']} bytes" for c in EXACT if cats[c]["bytes"] != 0]
    if abs(err["peak"]["relative"]) > PEAK_TOLERANCE:
        failures.append(f"peak: {err['peak']['relative']:+.2%} (limit {PEAK_TOLERANCE:.0%})")
    err["shares"] = shares = peak_shares(estimate, measured)
    for name, share in shares.items():
        if abs(share) > SHARE_TOLERANCE:
            failures.append(f"{name}: {share:+.2%} of the measured peak (limit {SHARE_TOLERANCE:.0%})")
    if not phase_ok:
        failures.append(f"peak phase: estimate {estimate['peak_phase']}, measured {measured['peak_phase']}")
    return err, failures


def validate(cfg: ValidateConfig, progress=None, snapshot=None, reserved: bool = False) -> Validation:
    """Estimate ``cfg``, measure it, and compare. ``progress(n)`` is called per step.
    ``reserved``: also predict ``max_memory_reserved`` by replaying the steps' allocations
    through the CUDA caching-allocator model (``measured["reserved"]``)."""
    import memplan
    t0 = time.perf_counter()
    est = memplan.estimate(cfg.model, cfg.method, **cfg.estimator_options())
    estimate = summarize_estimate(est)
    measured = summarize_measured(measure_config(cfg, progress, snapshot, reserved))
    error, failures = compare(estimate, measured)
    return Validation(cfg, estimate, measured, error, not failures, time.perf_counter() - t0, failures)
