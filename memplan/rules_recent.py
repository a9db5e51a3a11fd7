"""Memory rules of the methods people pick for a 16-24 GB GPU: QLoRA, Q-GaLore, APOLLO,
APOLLO-Mini and Fira, each read from the library its authors published.

Shapes as in methods.py: one trainable tensor (m, n), k = min, K = max, `r` the rank,
`s` bytes of a gradient element. Every rule names the code it models; each is checked
against that library by tests/test_recent_methods.py (state bytes and the transients
of a step and of a refresh, tensor by tensor, on CPU tensors in bf16 and fp32).

- APOLLO / APOLLO-Mini: apollo-torch 1.0.3 `APOLLOAdamW` (random projection, channel-wise
  scaling at the README's rank 256; APOLLO-Mini: rank 1, tensor-wise scaling, scale 128).
- Fira: fira 1.0.2 `FiraAdamW` (GaLore's SVD subspace plus the scaled residual gradient).
- Q-GaLore: q-galore-torch 1.0 `AdamW8bit` on bitsandbytes' 8-bit kernel, with INT4
  projections (`quant_n_bit=4`, groups of 256) as its training scripts set them.
- QLoRA: bitsandbytes 0.50.2 `PagedAdamW8bit` on peft LoRA adapters over NF4 weights.

Torch-free, like the rest of the estimator.
"""
from __future__ import annotations

from memplan.quant import moment8_bytes

NORM = 1  # a 0-d norm kept by the norm-growth limiter, in the gradient dtype (elements)


def _up(numel: int, s: int) -> int:
    return 0 if s == 4 else 4 * numel  # an fp32 copy of a bf16 / fp16 tensor


# ---------------------------------------------------------------- APOLLO (apollo-torch 1.0.3)

def apollo_state(t, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return 2 * t.numel * s, 0  # exp_avg, exp_avg_sq; state["step"] is a Python int
    # moments of the projected gradient (r x K); the limiter's last norm (0-d); the Gaussian projector
    # (r x k) lives in the GradientProjector object, cast to the gradient dtype
    return 2 * r * t.K * s + NORM * s, r * t.k * s


def apollo_mini_state(t, r: int, s: int) -> tuple[int, int]:
    return apollo_state(t, 1, s)  # rank 1 whatever --rank says


def dense_transformers_adam_temp(t, r: int, s: int) -> int:
    return 2 * t.numel * s  # denom = sqrt(exp_avg_sq) + eps, then exp_avg / denom (transformers-style AdamW)


def apollo_step_temp(t, r: int, s: int) -> int:
    if not t.projected:
        return dense_transformers_adam_temp(t, r, s)
    # R, denom and exp_avg / denom (r x K each); the channel scaling (K) and the limiter's norm;
    # the scaled full-size gradient p.grad * scale, and its division by the limiter (two m x n at once)
    return 2 * t.numel * s + 3 * r * t.K * s + t.K * s + NORM * s


def apollo_mini_step_temp(t, r: int, s: int) -> int:
    if not t.projected:
        return dense_transformers_adam_temp(t, r, s)
    # rank 1: R, denom, direction (K each); a 0-d tensor-wise scale and the limiter's norm; two m x n
    return 2 * t.numel * s + 3 * t.K * s + 2 * NORM * s


def apollo_refresh_temp(t, r: int, s: int) -> int:
    # GradientProjector.get_orthogonal_matrix: the fp32 copy of G, the fp32 Gaussian (r x k) and its
    # division by sqrt(r) alive together (then cast to the gradient dtype)
    return _up(t.numel, s) + 2 * 4 * r * t.k


def apollo_mini_refresh_temp(t, r: int, s: int) -> int:
    return apollo_refresh_temp(t, 1, s)


# ---------------------------------------------------------------- Fira (fira 1.0.2)

def fira_state(t, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return 2 * t.numel * s, 0
    # GaLore's moments + the limiter's last norm; the SVD projector is cast to the gradient dtype, but in
    # fp32 it is a view of Vh (or U) and keeps the whole k x k factor alive
    return 2 * r * t.K * s + NORM * s, (4 * t.k * t.k if s == 4 else r * t.k * s)


def fira_step_temp(t, r: int, s: int) -> int:
    if not t.projected:
        return dense_transformers_adam_temp(t, r, s)
    # R, denom, direction (r x K); the channel scaling (K); four m x n at once: the projected-back
    # gradient, G minus it, the scaled residual and the projected-back direction; two 0-d norms beyond
    # the one the state drops
    return 4 * t.numel * s + 3 * r * t.K * s + t.K * s + 2 * NORM * s


def fira_refresh_temp(t, r: int, s: int) -> int:
    # svd(G.float()): the fp32 copy, U (m x k), S (k), Vh (k x n); the new projector cast to s
    return _up(t.numel, s) + 4 * (t.m * t.k + t.k + t.k * t.n) + (0 if s == 4 else r * t.k * s)


def fira_walk(shapes, r: int, s: int, refresh: bool) -> int:
    """FiraAdamW's whole step, over the parameters in step order (non-projected first, as its
    scripts group them): the largest transient above the weights, gradients and state.

    Its loop's locals outlive the iteration, each until reassigned: after a non-projected
    parameter `denom` and `norm_grad` (m x n each); after a projected one `denom` (r x K),
    `norm_grad`, `subgrad` and `scaling_grad` (m x n each), `scaling_factor` (K) and two 0-d
    norms. So the next parameter's step (and its SVD, on a refresh step) runs above them: the
    refresh of the first projected weight sits on the last dense parameter's two full-size
    locals (the head's, 2 x 65.5 MB in fp32 at llama-60m). One parameter alone gives
    fira_step_temp and fira_refresh_temp.
    """
    peak = 0
    d = g = sub = sf = sg = nrm = 0  # the previous iterations' locals still alive
    for t in shapes:
        N = t.numel * s
        base = d + g + sub + sf + sg + nrm
        if not t.projected:
            peak = max(peak, base + N, base - d + 2 * N)  # denom beside the old one; exp_avg / denom
            d = g = N
            continue
        low, kb, norms = r * t.K * s, t.K * s, 2 * NORM * s
        if refresh:
            peak = max(peak, base + fira_refresh_temp(t, r, s))
        peak = max(peak,
                   base + 2 * low,  # R and the new denom, the old denom still alive
                   base - d + 3 * low,  # exp_avg / denom, the old norm_grad still alive
                   base - d - g + 3 * low + N,  # project_back(R), the old subgrad still alive
                   3 * low + N + sf + sg + nrm + 3 * kb,  # the two channel norms and their sum
                   3 * low + 3 * N + kb + sg + nrm,  # (p.grad - subgrad) * scaling_factor, old scaling_grad alive
                   3 * low + 4 * N + kb + norms)  # project_back(norm_grad) + scaling_grad (fira_step_temp)
        d, g, sub, sf, sg, nrm = low, N, N, kb, N, norms
    return peak


# ---------------------------------------------------------------- Q-GaLore (q-galore-torch 1.0)

PROJ_GROUP = 256  # q-galore's projector quantization group (its scripts' --proj_group_size)


def qgalore_projector(t, r: int, s: int) -> int:
    groups = -(-r * t.k // PROJ_GROUP)
    # INT4 codes stored one per uint8 (r x k); per-group scale and zero point in the gradient dtype;
    # the previous projector's first vector (k), kept for the cosine-similarity lazy update
    return r * t.k + 2 * groups * s + t.k * s


def qgalore_state(t, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return moment8_bytes(t.numel), 0  # bitsandbytes 8-bit Adam; step a Python int
    return moment8_bytes(r * t.K), qgalore_projector(t, r, s)


def qgalore_step_temp(t, r: int, s: int) -> int:
    if not t.projected:
        return 0  # bitsandbytes' kernel updates in place
    # p.saved_data = p.data.clone() (m x n) while p.data and p.grad become R (the full gradient of this
    # weight is freed); R and its copy (r x K each); the dequantized projector (r x k)
    return t.numel * s + 2 * r * t.K * s + r * t.k * s


def qgalore_refresh_temp(t, r: int, s: int) -> int:
    # svd(G.float()): fp32 copy, U, S, Vh; A = U[:, :r] @ diag(S[:r]) (r x K, fp32); at the peak, the new
    # projector cast to s (bf16 / fp16), or in fp32 (no cast) diag(S[:r]) (r x r) still alive
    return _up(t.numel, s) + 4 * (t.m * t.k + t.k + t.k * t.n) + 4 * r * t.K + (4 * r * r if s == 4 else r * t.k * s)


# ---------------------------------------------------------------- QLoRA (peft + bitsandbytes 0.50.2)

def qlora_state(t, r: int, s: int) -> tuple[int, int]:
    return moment8_bytes(t.numel), 0  # PagedAdamW8bit on each adapter: 8-bit moments, step a Python int


def no_temp(t, r: int, s: int) -> int:
    return 0  # bitsandbytes' 8-bit kernel updates in place


# ---------------------------------------------------------------- INT8 weights (the float_grad path)
# Q-GaLore and Q-APOLLO keep each block linear as uint8 codes with a bf16 scale and zero point per
# group of 256 (quant.int8_group_bytes) and its gradient in `p.float_grad`. Their step dequantizes
# the weight, updates it in the gradient dtype and quantizes it back; measured with bf16 gradients
# (the setting those libraries run), tensor by tensor, in tests/test_recent_methods.py.

def _groups(numel: int) -> int:
    from memplan.quant import INT8_GROUP

    return -(-numel // INT8_GROUP)


def qgalore_int8_step_temp(t, r: int, s: int) -> int:
    if not t.projected:
        return 0
    # the dequantized weight, its clone and the saved copy (m x n each, s), the re-quantized codes (m x n),
    # four per-group vectors (old and new scales and zeros), R (r x K)
    return 3 * t.numel * s + t.numel + 4 * _groups(t.numel) * s + r * t.K * s


def qgalore_int8_refresh_temp(t, r: int, s: int) -> int:
    return qgalore_refresh_temp(t, r, s) + t.numel * s + t.numel  # + the dequantized weight and its codes


def qapollo_state(t, r: int, s: int) -> tuple[int, int]:
    if not t.projected:
        return 2 * t.numel * 4, 0  # bitsandbytes' 32-bit Adam: fp32 state1 / state2
    return 2 * r * t.K * 4 + NORM * s, r * t.k * s  # fp32 moments of R; the limiter's norm; projector


def qapollo_mini_state(t, r: int, s: int) -> tuple[int, int]:
    return qapollo_state(t, 1, s)


def qapollo_step_temp(t, r: int, s: int) -> int:
    if not t.projected:
        return 0  # bitsandbytes' 32-bit kernel updates in place
    # dequantized weight, saved weight, saved full gradient, scaled gradient and its limiter division
    # (m x n each, s); re-quantized codes; four per-group vectors; R and the direction's copy (r x K);
    # the channel scale (K); the limiter's norm
    return 4 * t.numel * s + t.numel + 4 * _groups(t.numel) * s + 2 * r * t.K * s + t.K * s + NORM * s


def qapollo_mini_step_temp(t, r: int, s: int) -> int:
    if not t.projected:
        return 0
    # as above at rank 1, with a 0-d tensor-wise scale in place of the channel scale
    return 4 * t.numel * s + t.numel + 4 * _groups(t.numel) * s + 2 * t.K * s + 2 * NORM * s
