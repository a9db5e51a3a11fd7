"""The numbers behind each page: thin, cached calls into the library.

Nothing here models memory: every byte comes from `memplan.estimate` or the
planner (`memplan.compare`, `max_rank`, `max_batch_size`, `max_seq_len`, `plan`).
Results are plain dicts and lists of bytes, so Streamlit's cache can copy them
safely. One estimate takes a few milliseconds; the sweeps and searches (tens of
estimates) are cached.
"""
from __future__ import annotations

import streamlit as st

import memplan
from memplan import METHODS, MemplanError, ModelProfile
from memplan.estimator import capacity_bytes
from memplan.profiles import load_gpus

RANKS = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
GPU_COUNTS = (1, 2, 4, 8)
PROJECTION_METHODS = tuple(m for m, spec in METHODS.items() if spec.uses_rank and not spec.adapter)


def short_gpu(gid: str) -> str:
    return load_gpus()[gid].name.replace("NVIDIA ", "").replace("GeForce ", "")


def estimate(model: ModelProfile, method: str, gpu: str, opts: dict) -> memplan.Estimate:
    return memplan.estimate(model, method, gpu=gpu, **opts)


@st.cache_data(show_spinner=False, max_entries=256)
def compare(model: ModelProfile, methods: tuple[str, ...], gpu: str, opts: dict) -> list[dict]:
    """`memplan.compare`: one row per method, smallest peak first, with the saving against AdamW."""
    rows = []
    # each method with its own default implementation and weights; offload only where the method allows it
    opts = {k: v for k, v in opts.items() if k not in ("impl", "weights", "offload")}
    for r in memplan.compare(model, list(methods), gpu=gpu, **opts):
        fit = r.estimate.fit()
        rows.append({"method": r.method, "breakdown": dict(r.estimate.breakdown),
                     "device_total_bytes": r.estimate.device_total_bytes, "peak_phase": r.estimate.peak_phase,
                     "peak_bytes": r.estimate.peak_bytes, "fits": fit.fits, "headroom_bytes": fit.headroom_bytes,
                     "saved_vs_adamw_bytes": r.saved_bytes, "saved_vs_adamw_pct": 100 * r.saved_fraction})
    return rows


def for_method(method: str, opts: dict) -> dict:
    """`opts` for another method: the chosen implementation if it has it, else its own default."""
    from memplan.impls import carried

    out = {k: v for k, v in opts.items() if k != "impl"}
    impl = carried(method, opts.get("impl"))
    return {**out, "impl": impl} if impl else out


@st.cache_data(show_spinner=False, max_entries=128)
def rank_sweep(model: ModelProfile, methods: tuple[str, ...], opts: dict) -> dict[str, list[tuple[int, int]]]:
    """{method: [(rank, device total bytes), ...]} over RANKS up to the model's smallest projected side."""
    out = {}
    for m in methods:
        pts = []
        mo = for_method(m, opts)
        for r in RANKS:
            try:
                pts.append((r, memplan.estimate(model, m, **{**mo, "rank": r}).device_total_bytes))
            except MemplanError:
                break  # the rank passed the smallest projected dimension
        out[m] = pts
    return out


@st.cache_data(show_spinner=False, max_entries=128)
def largest_ranks(model: ModelProfile, methods: tuple[str, ...], gpu: str, opts: dict) -> dict[str, tuple[int, int]]:
    """{method: (largest rank that fits the GPU, its device total)} from `memplan.max_rank`; absent: none fits."""
    out = {}
    rest = {k: v for k, v in opts.items() if k != "rank"}
    for m in methods:
        mo = for_method(m, rest)
        r = memplan.max_rank(model, gpu, m, **mo, rank=1)  # the search sets the rank; 1 is valid on any model
        if r:
            out[m] = (r, memplan.estimate(model, m, **{**mo, "rank": r}).device_total_bytes)
    return out


@st.cache_data(show_spinner=False, max_entries=128)
def axis_sweep(model: ModelProfile, method: str, opts: dict, axis: str, values: tuple[int, ...]
               ) -> tuple[list[int], list[dict]]:
    """Breakdowns (bytes, overhead included) for each value of batch_size or seq_len."""
    xs, bds = [], []
    for v in values:
        xs.append(v)
        bds.append(dict(memplan.estimate(model, method, **{**opts, axis: v}).breakdown))
    return xs, bds


@st.cache_data(show_spinner=False, max_entries=128)
def largest_size(model: ModelProfile, method: str, gpu: str, opts: dict, axis: str) -> int:
    """`memplan.max_batch_size` (at the run's seq_len) or `memplan.max_seq_len` (at its batch size)."""
    if axis == "batch_size":
        return memplan.max_batch_size(model, gpu, method, **{k: v for k, v in opts.items() if k != "batch_size"})
    return memplan.max_seq_len(model, gpu, method, **{k: v for k, v in opts.items() if k != "seq_len"})


@st.cache_data(show_spinner=False, max_entries=128)
def fit_options(model: ModelProfile, method: str, gpu: str, opts: dict) -> list[dict]:
    """`memplan.planner.fit_report` for one method: per-layer update x checkpointing, with the largest sizes."""
    from memplan.planner import fit_report

    rest = {k: v for k, v in opts.items() if k not in ("layerwise", "checkpointing")}
    return [r.to_dict() for r in fit_report(model, gpu, [method], **rest)]


@st.cache_data(show_spinner=False, max_entries=64)
def hardware(model: ModelProfile, method: str, opts: dict, counts: tuple[int, ...]) -> tuple[list[dict], list[str]]:
    """`memplan.plan`: GPU x count options that fit, cheapest per hour first; and the GPUs that never fit."""
    rows = []
    for p in memplan.plan(model, method, gpu_counts=counts, **opts):
        short = p.gpu.name.replace("NVIDIA ", "").replace("GeForce ", "")
        rows.append({"gpu": p.gpu.id, "name": p.gpu.name, "count": p.num_gpus,
                     "label": f"{p.num_gpus} × {short}", "layout": p.layout, "layout_name": p.engine,
                     "required_bytes": p.per_gpu_bytes, "capacity_bytes": p.capacity_bytes,
                     "headroom_bytes": p.headroom_bytes, "max_batch_size": p.max_batch_size,
                     "price_per_hour_usd": p.price_per_hour_usd, "price_purchase_usd": p.price_purchase_usd,
                     "price_date": p.gpu.price_date, "fits": True})
    fitting = {r["gpu"] for r in rows}
    never = [g.name for gid, g in load_gpus().items() if gid not in fitting]
    return rows, never


@st.cache_data(show_spinner=False, max_entries=128)
def advice(model: ModelProfile, method: str, gpu: str, opts: dict) -> dict:
    """`memplan.advisor.advise`: the changes that make the run fit (or leave room when it fits tightly)."""
    from memplan.advisor import advise

    return advise(model, gpu, method, **opts).to_dict()


def capacity(gid: str) -> int:
    return capacity_bytes(load_gpus()[gid])
