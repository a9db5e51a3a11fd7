"""Block-wise 8-bit optimizer state in pure PyTorch (bitsandbytes semantics).

bitsandbytes' 8-bit Adam keeps each moment as ``uint8`` codes into a 256-entry
"dynamic" quantization map, plus one fp32 absmax per block of 256 elements
(Dettmers et al., "8-bit Optimizers via Block-wise Quantization", 2022).
Tensors with fewer than 4096 elements keep plain fp32 moments.

We re-implement that layout with ordinary tensor ops instead of calling
bitsandbytes, because its optimizer step reads scalars back to the host and so
cannot run under ``FakeTensorMode``; ours runs on the CPU, on CUDA and on fake
tensors alike. ``tests/test_optim_8bit.py`` checks the maps bit for bit and the
update numerically against ``bitsandbytes.optim.AdamW8bit``.

State layout for one 8-bit moment called ``key`` (bytes for N elements):
  ``state[key]``              uint8, the moment's shape       N
  ``state[key + "_absmax"]``  fp32, ceil(N / 256)             4 * ceil(N / 256)
  ``state[key + "_qmap"]``    fp32, 256, shared by every tensor of the
                              optimizer on that device        2 * 256 * 4 per optimizer
The two maps (signed for the first moment, unsigned for the second) are the
same tensor objects everywhere, so summing state with storages de-duplicated
counts them once, as ``docs/CONTRACT.md`` requires.
"""
from __future__ import annotations

import math
import weakref

import torch
from torch._subclasses.fake_tensor import is_fake

BLOCK_SIZE = 256  # elements per fp32 absmax (bitsandbytes' blockwise optimizers)
MIN_8BIT_SIZE = 4096  # smaller tensors keep fp32 moments (bitsandbytes' min_8bit_size)
QMAP_SIZE = 256  # entries of one quantization map


def _dynamic_map(signed: bool, max_exponent_bits: int = 7, total_bits: int = 8) -> list[float]:
    """The 'dynamic' 8-bit data type of bitsandbytes (create_dynamic_map), as floats.

    Computed once at import with real CPU float32 tensors so the values are
    bit-identical to bitsandbytes' map even when later used under fake tensors.
    """
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        n_items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed else \
            2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        bounds = torch.linspace(0.1, 1, n_items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:  # pragma: no cover - not reached with the 8/7 defaults
        bounds = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (QMAP_SIZE - len(data))
    return sorted(data)


SIGNED_MAP = _dynamic_map(signed=True)  # first moment (can be negative)
UNSIGNED_MAP = _dynamic_map(signed=False)  # second moment (non-negative)

# (device, fake mode) -> (signed, unsigned) map tensors, shared by all optimizers
_QMAPS: dict = {}


def shared_qmaps(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two quantization maps on ``like``'s device, one pair per device.

    Under FakeTensorMode the pair is cached per fake mode, since fake tensors
    cannot cross modes.
    """
    mode = getattr(like, "fake_mode", None) if is_fake(like) else None
    key = (str(like.device), id(mode) if mode is not None else None)
    maps = _QMAPS.get(key)
    if maps is None or (mode is not None and maps[2] is not mode):
        signed = torch.tensor(SIGNED_MAP, dtype=torch.float32, device=like.device)
        unsigned = torch.tensor(UNSIGNED_MAP, dtype=torch.float32, device=like.device)
        maps = (signed, unsigned, mode)
        _QMAPS[key] = maps
    return maps[0], maps[1]


def uses_8bit(numel: int) -> bool:
    return numel >= MIN_8BIT_SIZE


def n_blocks(numel: int) -> int:
    return math.ceil(numel / BLOCK_SIZE)


def init_moment(state: dict, key: str, like: torch.Tensor, signed: bool) -> None:
    """Create one zero moment shaped like ``like``: 8-bit if large enough, else fp32."""
    if not uses_8bit(like.numel()):
        state[key] = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        return
    signed_map, unsigned_map = shared_qmaps(like)
    qmap = signed_map if signed else unsigned_map
    # all-zero codes with a zero absmax dequantize to 0 (as bitsandbytes initializes)
    state[key] = torch.zeros(like.shape, dtype=torch.uint8, device=like.device)
    state[key + "_absmax"] = torch.zeros(n_blocks(like.numel()), dtype=torch.float32, device=like.device)
    state[key + "_qmap"] = qmap


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    """uint8 codes -> fp32 values (code value times its block's absmax)."""
    n = codes.numel()
    vals = qmap.index_select(0, codes.reshape(-1).int())  # int32 index_select: ~3x faster than long indexing
    pad = n_blocks(n) * BLOCK_SIZE - n
    if pad:
        vals = torch.nn.functional.pad(vals, (0, pad))
    vals = (vals.view(-1, BLOCK_SIZE) * absmax.view(-1, 1)).view(-1)
    return vals[:n].view(codes.shape)


# Nearest-code search. torch.bucketize over the 255 midpoints costs ~200 ns per element on a
# CPU (a binary search), which made 8-bit Adam of a 16M-element embedding take seconds. The
# top 16 bits of an fp32 (sign, exponent, 7 mantissa bits) split [-1, 1] into buckets that
# each contain at most one midpoint of either map (checked in tests/test_optim_8bit.py), so
#   code = (# midpoints below the bucket) + (x > first midpoint at or above the bucket start)
# is the exact nearest code (ties go down, as bucketize's), with two gathers per element.
# Fake tensors take the same ops on fake tables of the same sizes (their values are never
# read), so a FakeTensorMode run allocates what a real one does.
_LUTS: dict = {}


def _nearest_lut(signed: bool, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(midpoints below each bucket (int32, 65536), the midpoints and +inf (fp32, 256)) on ``like``'s
    device: one pair per map and device, computed once; under FakeTensorMode one fake pair per mode."""
    mode = getattr(like, "fake_mode", None) if is_fake(like) else None
    key = (signed if mode is None else None, str(like.device), id(mode) if mode is not None else None)
    hit = _LUTS.get(key)
    if hit is None or (mode is not None and hit[2] is not mode):
        if mode is not None:
            below = like.new_empty(65536, dtype=torch.int32)
            padded = like.new_empty(QMAP_SIZE, dtype=torch.float32)
        else:
            q = torch.tensor(SIGNED_MAP if signed else UNSIGNED_MAP, dtype=torch.float32)
            mid = (q[:-1] + q[1:]) / 2
            bits = torch.arange(65536, dtype=torch.int32) << 16
            ends = torch.stack([bits.view(torch.float32), (bits | 0xFFFF).view(torch.float32)])
            start = ends.nan_to_num(0.0).amin(dim=0)  # smallest value of each bucket
            below = torch.bucketize(start, mid, right=False).to(torch.int32).to(like.device)  # midpoints < start
            padded = torch.cat([mid, torch.tensor([float("inf")])]).to(like.device)
        hit = (below, padded, mode)
        _LUTS[key] = hit
    return hit[0], hit[1]


_SIGNED: dict[int, bool] = {}  # id(map) -> signed, while the map lives


def _signed(qmap: torch.Tensor) -> bool:
    """Whether ``qmap`` is the signed map, read from it once (on CUDA, reading it syncs the device)."""
    signed = _SIGNED.get(id(qmap))
    if signed is None:
        signed = _SIGNED[id(qmap)] = bool(qmap[0] < 0)
        weakref.finalize(qmap, _SIGNED.pop, id(qmap), None)
    return signed


def nearest_code(scaled: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    """Index (int32) of the nearest ``qmap`` entry for values in [-1, 1] (``scaled`` contiguous).

    At most two 4-byte buffers per element are alive at once (what bucketize's int64 output
    would take), on real and fake tensors alike (memplan.methods.adam8_direction_temp).
    """
    below, padded = _nearest_lut(is_fake(scaled) or _signed(qmap), scaled)
    flat = scaled.reshape(-1)
    bucket = flat.view(torch.int32) >> 16
    bucket.bitwise_and_(0xFFFF)
    code = below.index_select(0, bucket)
    del bucket
    upper = padded.index_select(0, code)  # the first midpoint at or above the bucket's start
    upper.sub_(flat)  # negative where the value lies above it: its sign bit set (x - y < 0 iff y > x)
    code.sub_(upper.view(torch.int32).bitwise_right_shift_(31))  # -1 there: the next code
    return code.view(scaled.shape)


def quantize_(x: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor) -> None:
    """fp32 values -> nearest map entry of x / absmax(block), written in place."""
    n = x.numel()
    flat = x.reshape(-1).float()
    pad = n_blocks(n) * BLOCK_SIZE - n
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.view(-1, BLOCK_SIZE)
    absmax.copy_(blocks.abs().amax(dim=1))
    scaled = (blocks / absmax.clamp(min=1e-38).view(-1, 1)).clamp_(-1, 1).view(-1)[:n]
    codes.copy_(nearest_code(scaled, qmap).view(codes.shape))


def load_moment(state: dict, key: str) -> torch.Tensor:
    """The moment as an fp32 tensor (a fresh copy for 8-bit, the state itself for fp32)."""
    value = state[key]
    if value.dtype != torch.uint8:
        return value
    return dequantize(value, state[key + "_absmax"], state[key + "_qmap"])


def store_moment(state: dict, key: str, value: torch.Tensor) -> None:
    """Write an fp32 moment back (re-quantize if the state is 8-bit)."""
    target = state[key]
    if target.dtype != torch.uint8:
        if value is not target:
            target.copy_(value)
        return
    quantize_(value, target, state[key + "_absmax"], state[key + "_qmap"])


def adam8bit_direction(state: dict, grad: torch.Tensor, beta1: float, beta2: float,
                       eps: float, step: int) -> torch.Tensor:
    """One bitsandbytes-style Adam update of the (8-bit or fp32) moments ``exp_avg``
    / ``exp_avg_sq``; returns the fp32 direction ``m_hat / (sqrt(v_hat) + eps)``.

    Same arithmetic as bitsandbytes' blockwise kernel: dequantize, update in
    fp32, ``denom = sqrt(v) / sqrt(1 - beta2^t) + eps``, re-quantize.
    """
    g = grad.float()
    m = load_moment(state, "exp_avg")
    v = load_moment(state, "exp_avg_sq")
    m.mul_(beta1).add_(g, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    denom = (v.sqrt() / math.sqrt(1.0 - beta2 ** step)).add_(eps)
    direction = m / denom
    direction.div_(1.0 - beta1 ** step)
    store_moment(state, "exp_avg", m)
    store_moment(state, "exp_avg_sq", v)
    return direction
