"""Sanity bounds on every size memplan reads, each with its reason (docs/limits.md).

memplan reads configs downloaded from anywhere and serves a dashboard, so no number
is taken on trust: a size outside its bound is refused with a one-line
`MemplanError` that names the key, the value, the bound and why the bound is there.
The bounds sit well above every published model and GPU, so no real run is
refused; what they stop is a typo or a hostile file (10^12 layers, a 2^40 hidden
size, a negative embedding table) turning into a silent wrong answer or a
denial of service.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from memplan.errors import MemplanError


@dataclass(frozen=True)
class Bound:
    """The range a number accepts, and why (said when a value falls outside it)."""

    low: int | float
    high: int | float
    why: str


# ------------------------------------------------------------ model configs (config.json keys)
HIDDEN = Bound(1, 1 << 17, "the widest published transformers have hidden sizes of 12,288 to 25,600")
FFN = Bound(1, 1 << 20, "the widest published MLPs have 53,248 to 73,728 units")
HEADS = Bound(1, 1 << 12, "published models have at most a few hundred attention heads")
LAYERS = Bound(1, 256, "the deepest published language models have under 200 layers (Llama 3.1 405B: 126), and "
                       "the planner's per-tensor walks would take over a second on deeper ones")
VOCAB = Bound(1, 1 << 24, "the largest published vocabularies have about 256,000 tokens")
POSITIONS = Bound(1, 1 << 24, "the longest published contexts are about 10 million tokens")
TYPE_VOCAB = Bound(0, 1 << 16, "BERT-style token-type tables have 1 or 2 rows")
EXPERTS = Bound(1, 1 << 12, "the largest published mixtures have a few hundred experts")
EPS = Bound(0.0, 1.0, "a normalization epsilon is a small positive number such as 1e-5")
ROPE_THETA = Bound(1.0, 1e12, "published RoPE bases are 10,000 to 500,000,000")

# ------------------------------------------------------------ one training run (CLI options, library arguments)
BATCH = Bound(1, 1 << 20, "a micro-batch of over a million sequences is not a training run")
SEQ = Bound(1, 1 << 24, "the longest published training contexts are about 10 million tokens")
RANK = Bound(1, 1 << 17, "a rank cannot exceed the hidden size, itself at most 131,072")
UPDATE_GAP = Bound(1, 10**9, "a projection refresh interval beyond a billion steps means never")
GPU_COUNT = Bound(1, 4096, "memplan plans single nodes and clusters of up to 4,096 GPUs")
HEADROOM_GIB = Bound(0.0, 1 << 20, "no GPU has a mebibyte of gibibytes")
HOST_RAM_GIB = Bound(0.0, 1 << 20, "no host has a pebibyte of RAM")
SWEEP_CELLS = 4096  # combinations of one sweep: each is an estimate; 4,096 of them take about a second
LIST_ITEMS = 256  # values in one comma-separated option

# ------------------------------------------------------------ GPU profiles and files
GPU_MIB = Bound(1, 1 << 24, "the largest single GPUs have 192 to 288 GB; 16 TiB leaves room for decades")
BANDWIDTH_GBS = Bound(0.0, 1e6, "the fastest GPU memories move about 8,000 GB/s")
PRICE_USD = Bound(0.0, 1e8, "no single GPU costs a hundred million dollars")
GPU_PROFILES = 1024  # GPUs in one --gpu-file: `plan` searches every one of them
FILE_BYTES = 1 << 20  # a Hugging Face config.json or a GPU file is a few KB; 1 MiB is a generous limit
REPORT_BYTES = 4 << 20  # a validation report: the full grid's 268 points are about 1 MB
REPORT_POINTS = 2_000  # points in one validation report (the full grid has 268)


def check_int(value, bound: Bound, what: str) -> int:
    """`value` as an int within `bound`, else a MemplanError naming `what`, the bound and why."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemplanError(f"{what} must be an integer, got {value!r}.")
    if not bound.low <= value <= bound.high:
        raise MemplanError(f"{what} must be between {bound.low:,} and {bound.high:,}, got {value:,}: "
                           f"{bound.why}.")
    return value


def check_float(value, bound: Bound, what: str, low_open: bool = False) -> float:
    """A finite number within `bound` (above `bound.low` when `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MemplanError(f"{what} must be a number, got {value!r}.")
    v = float(value)
    if not math.isfinite(v) or v > bound.high or v < bound.low or (low_open and v == bound.low):
        side = "above" if low_open else "from"
        raise MemplanError(f"{what} must be a finite number {side} {_num(bound.low)} up to {_num(bound.high)}, "
                           f"got {value!r}: {bound.why}.")
    return v


def _num(x) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 1 else f"{x:g}"


def check_size(data: bytes, what: str) -> bytes:
    if len(data) > FILE_BYTES:
        raise MemplanError(f"{what} is {len(data):,} bytes; memplan reads at most {FILE_BYTES:,} "
                           "(a Hugging Face config.json or a GPU file is a few KB).")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: "bytes | str", where: str, kind: str = "a Hugging Face config.json",
               max_bytes: int = FILE_BYTES):
    """JSON from an untrusted file: bounded size, UTF-8, no NaN/Infinity, no runaway nesting.

    Every failure is a one-line MemplanError naming `where`.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise MemplanError(f"{where} is {len(data):,} bytes; memplan reads at most {max_bytes:,} for {kind}.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MemplanError(f"{where} is not UTF-8 text (byte {e.start}): expected {kind}.") from None
    import json

    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise MemplanError(f"{where} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None
    except RecursionError:
        raise MemplanError(f"{where} is nested too deeply to be {kind}.") from None
    except ValueError as e:  # NaN / Infinity, integers of over 4,300 digits
        raise MemplanError(f"{where} is not valid JSON: {str(e).splitlines()[0]}.") from None


def table() -> str:
    """Every bound as a text table (docs/limits.md is rendered from it)."""
    rows = [(name, f"{_num(b.low)} .. {_num(b.high)}", b.why) for name, b in globals().items()
            if isinstance(b, Bound)]
    rows += [("SWEEP_CELLS", f"at most {SWEEP_CELLS:,}", "combinations in one sweep (about a second of estimates)"),
             ("LIST_ITEMS", f"at most {LIST_ITEMS}", "values in one comma-separated option"),
             ("GPU_PROFILES", f"at most {GPU_PROFILES:,}", "GPUs in one --gpu-file (plan searches every one)"),
             ("FILE_BYTES", f"at most {FILE_BYTES:,}", "bytes of a config.json or GPU file (they are a few KB)"),
             ("REPORT_BYTES", f"at most {REPORT_BYTES:,}", "bytes of a validation report (the full grid's: about 1 MB)"),
             ("REPORT_POINTS", f"at most {REPORT_POINTS:,}", "points in a validation report")]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


if __name__ == "__main__":
    print(table())
