"""Implementations: the code that runs a method, one memory record per (method, implementation).

A method (methods.py) is an algorithm; an implementation is the library that runs it
(`torch.optim.AdamW(foreach=True)`, galore-torch 1.0, bitsandbytes 0.50.2, memplan's
bundled optimizers). The state a method keeps rarely changes between implementations;
the transients often do (torch's `foreach` AdamW allocates one buffer the size of every
parameter; galore-torch projects back into two layer-sized tensors; transformers'
Adafactor keeps no first moment by default). See ../shared/design/IMPLEMENTATIONS.md.

Each `Impl` says which library and version it models, its state rule, the transients of
one tensor's step (`step_temp`, also what the per-layer update pays per tensor), the
transients of a whole optimizer step when they span several tensors (`sequence_temp`:
foreach buffers, locals a Python loop keeps alive into the next parameter), and the
refresh transients. Rules take `(shape, rank, state_bytes, knobs)`; `knobs` carries the
options that change memory (SGD momentum, Adafactor beta1). Each method names its default
implementation: what a user gets on a GPU from the library the method's authors (or
torch) published, `bundled` where none runs. Measured against the real libraries by
`memplan validate --impl X` (memplan/measure/libs.py) and tests/test_impls.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable, Sequence

from memplan.errors import MemplanError
from memplan.methods import (METHODS, STEP, Shape, _up, adafactor_step_temp, adamw_step_temp, moment8_bytes)
from memplan.records import cached_hash

NO_BETA1 = "none"  # Adafactor without a first moment (transformers' default: beta1=None)


@cached_hash
@dataclass(frozen=True)
class Knobs:
    """Optimizer options that change memory, resolved against the implementation's defaults."""

    momentum: float = 0.0  # SGD momentum; 0 keeps no buffer (torch.optim.SGD's default)
    beta1: float | None = None  # Adafactor first-moment decay; None keeps no first moment


StateRule = Callable[[Shape, int, int, Knobs], "tuple[int, int]"]
TempRule = Callable[[Shape, int, int, Knobs], int]
# (trainable shapes in the order the optimizer steps them, rank, state bytes, knobs) -> bytes
SequenceRule = Callable[[Sequence[Shape], int, int, Knobs], int]


@dataclass(frozen=True)
class Impl:
    """The code that runs a method (a library or the bundled optimizer): its memory rules."""

    method: str
    name: str
    library: str  # the code and version this record models
    description: str
    state: StateRule  # (optimizer_states, projectors) bytes of one tensor
    step_temp: TempRule  # transients of one tensor stepped alone
    refresh_temp: TempRule | None = None  # transients of one projection refresh (None: no refresh)
    sequence_temp: SequenceRule | None = None  # whole-step transients over all tensors (None: the largest tensor's)
    sequence_refresh: SequenceRule | None = None  # the same for a refresh step (None: the largest refresh)
    adapter_bytes: int | None = None  # adapters' own dtype (peft keeps them fp32); None: the model's
    defaults: Knobs = field(default_factory=Knobs)
    regular_first: bool = False  # steps non-projected parameters before projected ones (galore-torch recipes)
    shards_with_states: bool = False  # the step's transients are per state element (foreach): ZeRO divides them
    qmaps_per_optimizer: bool = False  # bitsandbytes: each optimizer instance keeps its own quantization maps
    checked_by: str = ""  # the measurement that checks it

    @property
    def label(self) -> str:
        return f"{self.name} ({self.library})"


def _lift(rule) -> Callable:
    """A method rule (shape, rank, state bytes) as an implementation rule (+ knobs)."""
    return None if rule is None else (lambda t, r, s, o: rule(t, r, s))


# ---------------------------------------------------------------- torch.optim.AdamW (torch 2.13)

def _adamw_state(t: Shape, r: int, s: int, o: Knobs) -> tuple[int, int]:
    return 2 * t.numel * s + STEP, 0  # exp_avg, exp_avg_sq; state["step"] a 0-d fp32 tensor


def _foreach_temp(t: Shape, r: int, s: int, o: Knobs) -> int:
    return t.numel * s  # torch._foreach_sqrt(exp_avg_sqs): one output per tensor, then in-place div/add


def _foreach_all(shapes: Sequence[Shape], r: int, s: int, o: Knobs) -> int:
    # _multi_tensor_adam groups tensors by (device, dtype) and takes the sqrt of every exp_avg_sq of
    # the group at once: one buffer the size of all the group's parameters (one dtype here)
    return sum(t.numel for t in shapes) * s


def _forloop_all(shapes: Sequence[Shape], r: int, s: int, o: Knobs) -> int:
    # _single_tensor_adam: denom = (exp_avg_sq.sqrt() / c).add_(eps): the sqrt and its quotient alive
    # together, while the previous parameter's `denom` (a loop local) is still referenced
    peak, prev = 0, 0
    for t in shapes:
        peak = max(peak, prev + 2 * t.numel * s)
        prev = t.numel * s
    return peak


def _no_temp(t: Shape, r: int, s: int, o: Knobs) -> int:
    return 0


# ---------------------------------------------------------------- torch.optim.SGD

def _sgd_state(t: Shape, r: int, s: int, o: Knobs) -> tuple[int, int]:
    return (t.numel * s if o.momentum else 0), 0  # momentum_buffer only with momentum != 0; no step


# ---------------------------------------------------------------- transformers Adafactor (5.24)

def _hf_adafactor_state(t: Shape, r: int, s: int, o: Knobs) -> tuple[int, int]:
    # all fp32 (built from the fp32 copy of the gradient); state["step"] is a Python int, state["RMS"]
    # a 0-d fp32 tensor; exp_avg only when beta1 is not None
    first = 4 * t.numel if o.beta1 is not None else 0
    second = (t.m + t.n) * 4 if t.matrix else 4 * t.numel  # row + column factors, or a full moment
    return second + first + 4, 0


def _hf_adafactor_temp(t: Shape, r: int, s: int, o: Knobs) -> int:
    # fp32 copies of the gradient and of the weight (bf16 / fp16 only); grad**2 and grad**2 + eps
    # alive together; later the factored estimate and update = -update on the way out
    return 2 * _up(t.numel, s) + 2 * 4 * t.numel


def _hf_adafactor_all(shapes: Sequence[Shape], r: int, s: int, o: Knobs) -> int:
    # the loop's `update` (fp32, m x n) outlives its iteration when there is no first moment (with
    # beta1 it ends as exp_avg, which is state): it is still alive while the next parameter computes
    # grad**2 + eps
    peak, prev = 0, 0
    for t in shapes:
        peak = max(peak, prev + _hf_adafactor_temp(t, r, s, o))
        prev = 4 * t.numel if o.beta1 is None else 0
    return peak


def _bundled_adafactor_state(t: Shape, r: int, s: int, o: Knobs) -> tuple[int, int]:
    first = 4 * t.numel if o.beta1 is not None else 0
    second = (t.m + t.n) * 4 if t.matrix else 4 * t.numel
    return second + first + STEP, 0


# ---------------------------------------------------------------- bitsandbytes 8-bit Adam (0.50.2)

def _bnb_state(t: Shape, r: int, s: int, o: Knobs) -> tuple[int, int]:
    return moment8_bytes(t.numel), 0  # state1/2 uint8 + absmax1/2 (or fp32 moments < 4096); step an int


# ---------------------------------------------------------------- registry

def _impls() -> list[Impl]:
    m = METHODS
    adamw = [
        Impl("adamw", "torch-foreach", "torch 2.13 torch.optim.AdamW(foreach=True), torch's default on CUDA",
             "multi-tensor AdamW: one sqrt buffer the size of all parameters of a dtype",
             _adamw_state, _foreach_temp, sequence_temp=_foreach_all, shards_with_states=True,
             checked_by="validate --impl torch-foreach (CPU tensors run the same foreach path)"),
        Impl("adamw", "torch-fused", "torch 2.13 torch.optim.AdamW(fused=True)",
             "fused kernel: the update is done in place, no temporaries",
             _adamw_state, _no_temp, checked_by="validate --impl torch-fused"),
        Impl("adamw", "torch-forloop", "torch 2.13 torch.optim.AdamW(foreach=False), the CPU default",
             "one tensor at a time: sqrt(exp_avg_sq) and its quotient, next to the previous tensor's",
             _adamw_state, _lift(adamw_step_temp), sequence_temp=_forloop_all, checked_by="validate --impl torch-forloop"),
    ]
    out = adamw + [
        Impl("sgd", "torch", "torch 2.13 torch.optim.SGD (foreach or for-loop alike)",
             "momentum buffer only with momentum != 0 (torch's default momentum is 0)",
             _sgd_state, _no_temp, checked_by="validate --impl torch --momentum M"),
        Impl("adafactor", "transformers", "transformers 5.24 transformers.optimization.Adafactor",
             "fp32 factored second moment; no first moment unless beta1 is set (its default beta1=None)",
             _hf_adafactor_state, _hf_adafactor_temp, sequence_temp=_hf_adafactor_all, checked_by="validate --impl transformers"),
        Impl("adafactor", "bundled", "memplan.optim.Adafactor", "the GaLore paper's setting: beta1 0.9",
             _bundled_adafactor_state, _lift(adafactor_step_temp), defaults=Knobs(beta1=0.9),
             checked_by="validate --impl bundled"),
        Impl("adam8bit", "bitsandbytes", "bitsandbytes 0.50.2 bnb.optim.AdamW8bit (CUDA kernel)",
             "block-wise 8-bit moments updated in place by one kernel",
             _bnb_state, _no_temp, qmaps_per_optimizer=True, checked_by="validate --impl bitsandbytes (states; CPU kernel differs)"),
    ]
    for name in ("adam8bit", "golore", "sumo", "gradnormlorp", "gradnormlorp8bit", "relora", "lowrank",
                 "galore", "galore8bit"):
        meth = m[name]
        out.append(Impl(name, "bundled", f"memplan.optim ({name})", "memplan's bundled optimizer",
                        _lift(meth.state), _lift(meth.step_temp), _lift(meth.refresh_temp),
                        checked_by="validate --impl bundled; benchmarks/validate_step_temps.py"))
    out.append(Impl("lora", "peft", "peft 0.21 LoRA (fp32 adapters) + torch 2.13 torch.optim.AdamW (foreach)",
                    "peft keeps the adapters in fp32 under a bf16 / fp16 base; AdamW takes torch's CUDA default",
                    _adamw_state, _foreach_temp, sequence_temp=_foreach_all, adapter_bytes=4, shards_with_states=True,
                    checked_by="validate --impl peft"))
    out.append(Impl("lora", "bundled", "memplan.models.lora + torch.optim.AdamW(foreach=False)",
                    "adapters in the model's dtype, AdamW one tensor at a time",
                    _lift(m["lora"].state), _lift(m["lora"].step_temp), checked_by="validate --impl bundled"))
    return out


IMPLS: dict[str, dict[str, Impl]] = {}
for _i in _impls():
    IMPLS.setdefault(_i.method, {})[_i.name] = _i



def register(impl: Impl) -> None:
    """Add an implementation record (modules next to this one add theirs: galore-torch, ...)."""
    IMPLS.setdefault(impl.method, {})[impl.name] = impl


def impls_of(method: str) -> dict[str, Impl]:
    return IMPLS.get(METHODS[method].name, {})


def default_impl(method: str) -> str:
    """The method's default implementation (Method.default_impl)."""
    return METHODS[method].default_impl


def get_impl(method: str, name: str | None = None) -> Impl:
    """The record of `method` run by implementation `name` (None: the method's default)."""
    options = impls_of(method)
    key = default_impl(method) if name is None else str(name).strip().lower()
    if key in options:
        return options[key]
    raise MemplanError(f"Unknown implementation {name!r} for method '{method}'. "
                       f"Allowed: {', '.join(options)} (default {default_impl(method)}). See 'memplan methods'.")


def carried(method: str, impl: str | None) -> str | None:
    """`impl` when `method` has it (switching galore -> galore8bit keeps galore-torch), else None
    (the new method's default): for callers that swap the method of a configuration."""
    return impl if impl is not None and impl in impls_of(method) else None


def knobs(impl: Impl, momentum: float | None, beta1) -> Knobs:
    """The options in effect: the given ones, else the implementation's defaults."""
    mom = impl.defaults.momentum if momentum is None else float(momentum)
    if beta1 is None:
        b1 = impl.defaults.beta1
    elif beta1 == NO_BETA1:
        b1 = None
    else:
        b1 = float(beta1)
    return Knobs(momentum=mom, beta1=b1)


from memplan import impls_galore as _galore  # noqa: E402,F401  (registers galore-torch records)
from memplan import impls_recent as _recent  # noqa: E402,F401  (registers QLoRA, Q-GaLore, APOLLO, Fira)
