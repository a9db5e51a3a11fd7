"""Units: bytes are integers until they are shown. GiB = 2**30, GB = 10**9."""
from __future__ import annotations

GiB = 1 << 30
MiB = 1 << 20
GB = 10**9


def gib(n_bytes: int | float) -> float:
    """Bytes to GiB (binary, 2**30) as a float, for display only."""
    return n_bytes / GiB


def fmt_count(n: int) -> str:
    """6738415616 -> '6.74B'; 58073088 -> '58.1M'."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
