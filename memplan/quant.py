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
