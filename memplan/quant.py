"""Block-wise 8-bit optimizer state: the constants and the byte rule, in one place.

bitsandbytes semantics (checked against bitsandbytes 0.50.2, `optim/optimizer.py`,
`Optimizer8bit.init_state`): tensors with at least `MIN_8BIT_SIZE` elements keep each
moment as uint8 plus one fp32 absmax per `BLOCK_SIZE`-element block; smaller tensors
keep fp32 moments. The two 256-entry fp32 quantization maps (signed dynamic map for
the first moment, unsigned for the second) are shared by every tensor of an
optimizer, so they are counted once.
"""
from __future__ import annotations

MIN_8BIT_SIZE = 4096  # elements; below this the moments stay fp32
BLOCK_SIZE = 256  # elements per absmax block
QMAP_ENTRIES = 256  # entries of one quantization map
QMAP_BYTES = 2 * QMAP_ENTRIES * 4  # two fp32 maps, shared by all tensors


def quantized(numel: int) -> bool:
    return numel >= MIN_8BIT_SIZE


def moment8_bytes(numel: int, n_moments: int = 2) -> int:
    """Bytes of `n_moments` block-wise 8-bit moments of a tensor of `numel` elements."""
    if not quantized(numel):
        return n_moments * numel * 4  # fp32 moments
    blocks = -(-numel // BLOCK_SIZE)
    return n_moments * (numel * 1 + blocks * 4)  # uint8 codes + one fp32 absmax per block


# ---------------------------------------------------------------- quantized weights (--weights)
# bitsandbytes 0.50.2 NF4 (`quantize_4bit`, the QLoRA setting: blocksize 64, double quantization)
NF4_BLOCK = 64  # weights per absmax
NF4_NESTED_BLOCK = 256  # absmax values per second-level fp32 scale (quantize_blockwise)
NF4_CODE_BYTES = 16 * 4  # the NF4 code table (16 fp32), one per quantized weight
NESTED_CODE_BYTES = 256 * 4  # the dynamic 8-bit map of the nested absmax (256 fp32), one per weight
INT8_GROUP = 256  # Q-GaLore / Q-APOLLO weight quantization group (their scripts' --weight_group_size)
WEIGHT_FORMATS = ("bf16", "int8", "nf4")


def nf4_bytes(numel: int) -> int:
    """One NF4 weight with double quantization, as `bnb.nn.Params4bit` stores it."""
    blocks = -(-numel // NF4_BLOCK)
    nested = -(-blocks // NF4_NESTED_BLOCK)
    # packed codes, two per byte; uint8 absmax per block; the absmax offset (fp32 0-d); fp32 scale per
    # nested block; the two code tables
    return -(-numel // 2) + blocks + 4 + 4 * nested + NF4_CODE_BYTES + NESTED_CODE_BYTES


def int8_group_bytes(numel: int, scale_bytes: int) -> int:
    """One INT8 weight with a scale and a zero point per group (q-galore-torch `_quantize`)."""
    return numel + 2 * -(-numel // INT8_GROUP) * scale_bytes


def weight_bytes(fmt: str, numel: int, param_bytes: int) -> int:
    """Bytes of one linear weight stored in `fmt` ('bf16': unquantized, the precision's dtype)."""
    if fmt == "nf4":
        return nf4_bytes(numel)
    if fmt == "int8":
        return int8_group_bytes(numel, param_bytes)
    return numel * param_bytes
