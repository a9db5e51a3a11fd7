"""The memory rule of every method, registered in one table.

These are the rules of memplan's bundled implementation of each method; the rules of
other implementations (torch's foreach AdamW, galore-torch, transformers' Adafactor,
bitsandbytes, peft) are in memplan/impls.py, one record per (method, implementation).

A rule answers, for one trainable tensor of shape (m, n) (`n == 1` for vectors),
how many bytes of optimizer state and of projectors the method keeps, and what
transient memory its optimizer step and its projection refresh need. Shapes follow
`nn.Linear`: m = out_features, n = in_features, k = min(m, n), K = max(m, n).
See ../shared/design/ALGORITHMS.md for the algorithms behind each rule and
docs/CONTRACT.md for the exact state layout the bundled optimizers share.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

from memplan import rules_recent as rec
from memplan.quant import moment8_bytes

STEP = 4  # state["step"]: a 0-d fp32 tensor per parameter with state, as torch.optim.AdamW keeps it


@dataclass(frozen=True)
class Shape:
    """A parameter of m x n elements (a vector: n = 1), and whether the method projects it."""

    m: int
    n: int
    projected: bool  # a target weight (GaLore-style projection applies)

    @property
    def numel(self) -> int:
        return self.m * self.n

    @property
    def k(self) -> int:
        return min(self.m, self.n)

    @property
    def K(self) -> int:
        return max(self.m, self.n)

    @property
    def matrix(self) -> bool:
        return self.n > 1


# ---------------------------------------------------------------- plain optimizers
# Each returns (optimizer_states, projectors) bytes; s = bytes of a state element.

def adamw_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    return 2 * t.numel * s + STEP, 0  # exp_avg + exp_avg_sq, full size


def sgd_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    return t.numel * s, 0  # momentum_buffer; torch.optim.SGD keeps no step


def adafactor_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    if t.matrix:  # fp32 row (m) + column (n) second-moment factors + fp32 first moment (beta1 set)
        return (t.m + t.n) * 4 + t.numel * 4 + STEP, 0
    return 2 * t.numel * 4 + STEP, 0  # fp32 second moment + fp32 first moment


def adam8bit_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    return moment8_bytes(t.numel) + STEP, 0


# ---------------------------------------------------------------- projection methods

def galore_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return adamw_state(t, r, s)
    return 2 * r * t.K * s + STEP, r * t.k * s  # 2 moments x r x K; projector P is r x k


def galore8bit_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return adam8bit_state(t, r, s)
    return moment8_bytes(r * t.K) + STEP, r * t.k * s  # 8-bit moments of the r x K projected gradient


def sumo_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return adamw_state(t, r, s)
    # Q spans the larger side (K x r); one moment M of r x k; the norm-growth limiter keeps one fp32 scalar
    return r * t.k * s + 4 + STEP, r * t.K * s


def gradnormlorp_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return adamw_state(t, r, s)
    states, proj = galore_state(t, r, s)
    return states + 3 * t.m * s, proj  # magnitude g (m) and its two Adam moments


def gradnormlorp8bit_state(t: Shape, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return adam8bit_state(t, r, s)
    states, proj = galore8bit_state(t, r, s)
    return states + 3 * t.m * s, proj


# ---------------------------------------------------------------- transients
# Bytes alive, beyond state and gradient, while one tensor is stepped (the largest
# tensor sets the phase's temporaries), and during a projection refresh. Each rule is
# what the bundled optimizer (memplan/optim/) allocates, measured tensor by tensor by
# benchmarks/validate_step_temps.py; `up` is the fp32 upcast of a non-fp32 input.

def _up(numel: int, s: int) -> int:
    return 0 if s == 4 else 4 * numel  # an fp32 copy of a bf16 input


def adamw_step_temp(t: Shape, r: int, s: int) -> int:
    return 2 * t.numel * s  # torch.optim.AdamW (single tensor): sqrt(exp_avg_sq), then its division


def dense_adam_temp(t: Shape, r: int, s: int) -> int:
    return t.numel * s  # the bundled dense AdamW: one denominator, the update applied by addcdiv_


def no_temp(t: Shape, r: int, s: int) -> int:
    return 0


def adafactor_step_temp(t: Shape, r: int, s: int) -> int:
    # fp32 grad**2 and the fp32 update, row and column means (+ a 0-d scalar), the fp32 grad
    return 2 * t.numel * 4 + ((t.m + t.n) * 4 + 4 if t.matrix else 4) + _up(t.numel, s)


def adam8_direction_temp(numel: int, s: int) -> int:
    """The 8-bit Adam direction of a tensor of `numel` elements (memplan/optim/quant8bit.py)."""
    from memplan.quant import quantized

    if not quantized(numel):  # fp32 moments: the fp32 denominator and direction
        return 2 * numel * 4 + _up(numel, s)
    # both moments dequantized, updated, re-quantized (codes and absmax recomputed), fp32 direction;
    # the nearest-code search holds two int32 / fp32 buffers at a time (memplan/optim/quant8bit.py)
    return 7 * numel * 4 + _up(numel, s)


DENSE_8BIT_CHUNK = 1 << 20  # elements per chunk of the bundled dense 8-bit update (memplan/optim/galore.py)


def adam8bit_step_temp(t: Shape, r: int, s: int) -> int:
    if t.numel <= DENSE_8BIT_CHUNK:
        return adam8_direction_temp(t.numel, s)
    # chunked: the direction of one chunk, plus the chunk's fp32 weight slice and views
    c = DENSE_8BIT_CHUNK
    return 8 * c * 4 + 2 * _up(c, s)


def galore_step_temp(t: Shape, r: int, s: int) -> int:
    if not t.projected:
        return dense_adam_temp(t, r, s)
    # projected gradient R, denominator, low-rank direction (each r x K); the projected-back update
    # is added to W by one addmm_, with no m x n temporary
    return 3 * r * t.K * s


def galore8bit_step_temp(t: Shape, r: int, s: int) -> int:
    if not t.projected:
        return adam8bit_step_temp(t, r, s)
    return r * t.K * s + adam8_direction_temp(r * t.K, s)  # R, then its 8-bit Adam direction


def sumo_step_temp(t: Shape, r: int, s: int) -> int:
    if not t.projected:
        return dense_adam_temp(t, r, s)
    # G_hat (r x k, grad dtype); fp32: the moment's SVD factors U (r x r), S (r), Vh (r x k) and O
    return r * t.k * s + 4 * (2 * r * t.k + r * r + r)


def gradnormlorp_step_temp(t: Shape, r: int, s: int) -> int:
    if not t.projected:
        return dense_adam_temp(t, r, s)
    return galore_step_temp(t, r, s) + 4 * t.m * s  # + row norms, dL/dg and its Adam direction (m each)


def gradnormlorp8bit_step_temp(t: Shape, r: int, s: int) -> int:
    if not t.projected:
        return adam8bit_step_temp(t, r, s)
    return galore8bit_step_temp(t, r, s) + 4 * t.m * s


def svd_refresh_temp(t: Shape, r: int, s: int) -> int:
    # torch.linalg.svd(G.float(), full_matrices=False): U (m x k), S (k), Vh (k x n), and the
    # fp32 copy of G when the gradient is not fp32 already
    return _up(t.numel, s) + 4 * (t.m * t.k + t.k + t.k * t.n)


def gradnormlorp_refresh_temp(t: Shape, r: int, s: int) -> int:
    # the SVD is taken of dL/dV, built once as an fp32 m x n buffer (in place of GaLore's fp32 copy of G)
    return 4 * t.numel + 4 * (t.m * t.k + t.k + t.k * t.n)


def random_refresh_temp(t: Shape, r: int, s: int) -> int:
    # GoLore: a Gaussian frame (r x k, fp32), its QR factors Q and R, the new P; no SVD
    return 4 * (2 * r * t.k + r * r) + r * t.k * s


def randomized_svd_refresh_temp(t: Shape, r: int, s: int) -> int:
    # SUMO: Halko et al. with oversampling p: Omega (k x (r+p)), Y = G Omega (K x (r+p)),
    # its QR, B = Q^T G ((r+p) x k), the small SVD of B; all fp32, plus the fp32 copy of G
    rp = r + OVERSAMPLE
    return 4 * (t.numel + t.k * rp + 2 * t.K * rp + rp * t.k + rp * rp + rp)


OVERSAMPLE = 10


@dataclass(frozen=True)
class Method:
    """A training method: its paper and its default memory rules (state, step and refresh transients)."""

    name: str
    description: str
    paper: str
    state: Callable[[Shape, int, int], tuple[int, int]]
    step_temp: Callable[[Shape, int, int], int]
    refresh_temp: Callable[[Shape, int, int], int] | None = None  # None: no projection refresh
    adapter: str | None = None  # "lora" or "lowrank": the method changes the parameter set
    eightbit: bool = False  # keeps block-wise 8-bit state (shared quantization maps)
    uses_rank: bool = False
    train_non_target: bool = True  # default for non-target parameters (adapter methods)
    default_impl: str = "bundled"  # the implementation a user gets by default (memplan/impls.py)
    weights: tuple[str, ...] = ("bf16",)  # weight formats the method allows (--weights); the first is its default
    weight_impls: tuple[tuple[str, str], ...] = ()  # (format, implementation) pairs: a format's own code


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("adamw", "Full-rank AdamW: two full-size moments per parameter.",
           "Loshchilov & Hutter, Decoupled Weight Decay Regularization (ICLR 2019)", adamw_state, adamw_step_temp,
           default_impl="torch-foreach"),
    Method("sgd", "SGD with momentum: one full-size buffer per parameter.",
           "Polyak heavy-ball momentum (torch.optim.SGD)", sgd_state, no_temp, default_impl="torch"),
    Method("adafactor", "Adafactor: factored fp32 second moment (rows + columns), fp32 first moment.",
           "Shazeer & Stern, Adafactor (ICML 2018)", adafactor_state, adafactor_step_temp,
           default_impl="transformers"),
    Method("adam8bit", "8-bit Adam: block-wise quantized moments (bitsandbytes layout).",
           "Dettmers et al., 8-bit Optimizers via Block-wise Quantization (ICLR 2022)",
           adam8bit_state, adam8bit_step_temp, eightbit=True,
           default_impl="bitsandbytes"),
    Method("lora", "LoRA: frozen base weights, trainable low-rank adapters A (r x n), B (m x r).",
           "Hu et al., LoRA (ICLR 2022)", adamw_state, adamw_step_temp,
           adapter="lora", uses_rank=True, train_non_target=False, default_impl="peft", weights=("bf16", "nf4")),
    Method("relora", "ReLoRA: LoRA with periodic merges into the base weights and optimizer resets.",
           "Lialin et al., ReLoRA: High-Rank Training Through Low-Rank Updates (ICLR 2024)",
           adamw_state, adamw_step_temp, refresh_temp=lambda t, r, s: t.numel * s,  # merged B A, m x n
           adapter="lora", uses_rank=True),
    Method("lowrank", "Low-rank factorization W = B A trained from scratch; no full W.",
           "Kamalakara et al., Exploring Low Rank Training of Deep Neural Networks (2022)",
           adamw_state, adamw_step_temp, adapter="lowrank", uses_rank=True),
    Method("galore", "GaLore: Adam in an SVD subspace of each gradient, refreshed every T steps.",
           "Zhao et al., GaLore (ICML 2024)", galore_state, galore_step_temp, svd_refresh_temp, uses_rank=True,
           default_impl="galore-torch"),
    Method("galore8bit", "GaLore with block-wise 8-bit low-rank moments and 8-bit Adam elsewhere.",
           "Zhao et al., GaLore (ICML 2024)", galore8bit_state, galore8bit_step_temp, svd_refresh_temp,
           eightbit=True, uses_rank=True, default_impl="galore-torch"),
    Method("golore", "GoLore: GaLore with random (Stiefel) projections, SVD-free refreshes.",
           "He et al., Subspace Optimization for LLMs with Convergence Guarantees (ICML 2025)",
           galore_state, galore_step_temp, random_refresh_temp, uses_rank=True),
    Method("sumo", "SUMO: one subspace moment, orthogonalized by SVD, randomized-SVD subspace.",
           "Refael et al., SUMO: Subspace-Aware Moment-Orthogonalization (NeurIPS 2025)",
           sumo_state, sumo_step_temp, randomized_svd_refresh_temp, uses_rank=True),
    Method("gradnormlorp", "GradNormLoRP: weight-normalized weights, low-rank projected direction updates.",
           "Huang et al., Gradient Weight-normalized Low-rank Projection (AAAI 2025)",
           gradnormlorp_state, gradnormlorp_step_temp, gradnormlorp_refresh_temp, uses_rank=True),
    Method("gradnormlorp8bit", "GradNormLoRP with block-wise 8-bit low-rank moments.",
           "Huang et al., Gradient Weight-normalized Low-rank Projection (AAAI 2025)",
           gradnormlorp8bit_state, gradnormlorp8bit_step_temp, gradnormlorp_refresh_temp, eightbit=True,
           uses_rank=True),
    # the methods people pick for a 16-24 GB GPU (memplan/rules_recent.py: each rule from its library)
    Method("qlora", "QLoRA: NF4 base weights (double quantization) + LoRA adapters, paged 8-bit AdamW.",
           "Dettmers et al., QLoRA: Efficient Finetuning of Quantized LLMs (NeurIPS 2023)",
           rec.qlora_state, rec.no_temp, adapter="lora", eightbit=True, uses_rank=True, train_non_target=False,
           default_impl="peft-bitsandbytes", weights=("nf4",)),
    Method("qgalore", "Q-GaLore: INT8 weights, INT4 SVD projections with lazy refresh, 8-bit low-rank Adam.",
           "Zhang et al., Q-GaLore: Quantized GaLore with INT4 Projection and Layer-Adaptive Low-Rank "
           "Gradients (2024)", rec.qgalore_state, rec.qgalore_step_temp, rec.qgalore_refresh_temp,
           eightbit=True, uses_rank=True, default_impl="q-galore-torch", weights=("int8", "bf16"),
           weight_impls=(("bf16", "q-galore-torch-bf16"),)),
    Method("apollo", "APOLLO: AdamW moments of a random projection set channel-wise scales of the raw gradient.",
           "Zhu et al., APOLLO: SGD-like Memory, AdamW-level Performance (MLSys 2025)",
           rec.apollo_state, rec.apollo_step_temp, rec.apollo_refresh_temp, uses_rank=True,
           default_impl="apollo-torch", weights=("bf16", "int8"), weight_impls=(("int8", "q-apollo"),)),
    Method("apollo-mini", "APOLLO-Mini: rank-1 random projection, one tensor-wise scale per weight.",
           "Zhu et al., APOLLO: SGD-like Memory, AdamW-level Performance (MLSys 2025)",
           rec.apollo_mini_state, rec.apollo_mini_step_temp, rec.apollo_mini_refresh_temp,
           default_impl="apollo-torch", weights=("bf16", "int8"), weight_impls=(("int8", "q-apollo"),)),
    Method("fira", "Fira: GaLore's SVD subspace plus the residual gradient, scaled by the subspace's Adam ratio.",
           "Chen et al., Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint? (2024)",
           rec.fira_state, rec.fira_step_temp, rec.fira_refresh_temp, uses_rank=True, default_impl="fira"),
]}


def get_method(name: str) -> Method:
    m = METHODS.get(name) if isinstance(name, str) else None
    if m is not None:  # the exact name: every estimate asks, several times
        return m
    from memplan.errors import unknown

    key = str(name).strip().lower().replace("-", "").replace("_", "")
    for m in METHODS:
        if m.replace("-", "") == key:
            return METHODS[m]
    raise unknown("method", str(name), METHODS, "memplan methods")
