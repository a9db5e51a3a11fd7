"""Tables for the planner commands (tabulate). Bytes are shown in GiB (2**30 bytes)."""
from __future__ import annotations

import csv
import io

from tabulate import tabulate

from memplan.categories import CATEGORIES
from memplan.estimator import TrainingConfig, capacity_bytes
from memplan.methods import METHODS
from memplan.planner import MAX_SEQ_LEN, SWEEP_FIELDS, CompareRow, FitRow, PlanRow, rank_limit
from memplan.profiles import GPUProfile
from memplan.units import GiB


def g(n: int) -> str:
    return f"{n / GiB:,.2f}"


def signed(n: int) -> str:
    return f"{n / GiB:+,.2f}"


def _table(rows, headers, left: int = 1) -> str:
    align = ("left",) * left + ("right",) * (len(headers) - left)
    return tabulate(rows, headers, tablefmt="simple", disable_numparse=True, colalign=align)


def gpu_line(gpu: GPUProfile, capacity: int) -> str:
    return f"{gpu.name} ({gpu.id}), {g(capacity)} GiB usable"


def bf16_note(gpus, precision: str) -> list[str]:
    """A warning line when a bf16 run is planned on GPUs without bf16 support."""
    names = sorted({gp.id for gp in gpus if not gp.bf16})
    if precision != "bf16" or not names:
        return []
    return [f"Note: no native bf16 on {', '.join(names)} (emulated, slow); fp16 needs the same memory "
            "but loss scaling."]


def config_line(c: TrainingConfig, per_gpu: bool = False, method: bool = True) -> str:
    parts = [c.model.name, c.precision, f"batch {c.batch_size}{' per GPU' if per_gpu else ''} x seq {c.seq_len}"]
    if not method:
        parts.insert(1, f"rank {c.rank}")
    elif METHODS[c.method].uses_rank:
        parts.insert(1, f"{c.method} rank {c.rank}")
    else:
        parts.insert(1, c.method)
    if c.layerwise:
        parts.append("per-layer update")
    if c.checkpointing:
        parts.append("checkpointing")
    if method and c.weights:
        parts.append(f"{c.weights} weights")
    if c.offload != "none":
        parts.append(f"offload {c.offload}")
    if c.loss != "standard":
        parts.append(f"{c.loss} loss" + (f" (chunk {c.loss_chunk})" if c.loss_chunk else ""))
    return " | ".join(parts)


# ---------------------------------------------------------------- fit

def fit_table(rows: list[FitRow], gpu: GPUProfile, config: TrainingConfig) -> str:
    """`config`: the options shared by the rows (model, rank, batch, seq, precision)."""
    c = config
    yn = lambda b: "yes" if b else "no"  # noqa: E731
    seq = lambda n: f">={n:,}" if n >= MAX_SEQ_LEN else f"{n:,}"  # noqa: E731
    offloaded = c.offload != "none"
    table = [[r.method, "-" if r.rank is None else r.rank, yn(r.layerwise), yn(r.checkpointing), yn(r.fits),
              g(r.required_bytes), signed(r.headroom_bytes)]
             + ([g(r.host_bytes) + ("" if r.host_fits else " (no)")] if offloaded else [])
             + [f"{r.max_batch_size:,}", seq(r.max_seq_len), "-" if r.max_rank is None else f"{r.max_rank:,}"]
             for r in rows]
    headers = (["method", "rank", "per-layer", "ckpt", "fits", "need GiB", "headroom GiB"]
               + (["host GiB"] if offloaded else [])
               + [f"max batch @{c.seq_len}", "max seq @b1", "max rank"])
    lines = [f"{config_line(c, method=False)} | on {gpu_line(gpu, capacity_bytes(gpu))}", "", _table(table, headers),
             "", f"fits / need / headroom: at batch {c.batch_size} x seq {c.seq_len}, device total (allocated peak + "
             "CUDA context + fragmentation).",
             f"max batch: at seq {c.seq_len}; max seq: at batch 1 (search limit {MAX_SEQ_LEN:,}); max rank: at "
             f"batch {c.batch_size} x seq {c.seq_len}, up to {rank_limit(c):,}. 0: even 1 does not fit; -: no rank."]
    if offloaded:
        lines.append("host GiB: host memory of the offloaded optimizer (pinned copies and state), the same at "
                     "every batch and sequence; with --host-ram a row fits only if it fits there too ((no): it does not).")
    return "\n".join(lines + bf16_note([gpu], c.precision))


# ---------------------------------------------------------------- compare

SHORT = {"parameters": "params", "gradients": "grads", "optimizer_states": "states", "projectors": "proj",
         "activations": "acts", "temporaries": "temps", "overhead": "overhead"}


def compare_table(rows: list[CompareRow], gpu: GPUProfile | None, capacity: int | None) -> str:
    first = rows[0].estimate
    headers = ["method"] + [SHORT[c] for c in CATEGORIES] + ["peak phase", "peak", "device total", "saved GiB",
                                                             "saved %"]
    if gpu is not None:
        headers += ["fits", "headroom"]
    table = []
    for r in rows:
        e = r.estimate
        row = [r.method] + [g(e.breakdown[c]) for c in CATEGORIES] + [
            e.peak_phase, g(e.peak_bytes), g(e.device_total_bytes), signed(r.saved_bytes),
            f"{100 * r.saved_fraction:+.1f}%"]
        if gpu is not None:
            fit = e.fit()
            row += ["yes" if fit.fits else "no", signed(fit.headroom_bytes)]
        table.append(row)
    head = config_line(first.config, method=False)
    lines = [head + (f" | on {gpu_line(gpu, capacity)}" if gpu is not None else ""), "", _table(table, headers), ""]
    lines.append("GiB. Categories at each method's peak phase; peak = allocated; device total adds CUDA context "
                 "and fragmentation (overhead).")
    lines.append("saved: AdamW's peak minus the method's peak, same options. Sorted by peak.")
    return "\n".join(lines)


# ---------------------------------------------------------------- sweep

def sweep_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    extended = [{**r, "peak_allocated_gib": round(r["peak_allocated_bytes"] / GiB, 4),
                 "device_total_gib": round(r["device_total_bytes"] / GiB, 4)} for r in rows]
    w = csv.DictWriter(out, fieldnames=list(extended[0]), lineterminator="\n")
    w.writeheader()
    for r in extended:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return out.getvalue().rstrip("\n")


def _label(field: str) -> str:
    return {"rank": "rank", "batch_size": "batch", "seq_len": "seq"}[field]


def _cell(r: dict) -> str:
    mark = "" if r.get("fits", True) else " !"
    return g(r["peak_allocated_bytes"]) + mark


def sweep_table(rows: list[dict], gpu: GPUProfile | None) -> str:
    """Peaks as a grid: the first varying field down, the second across, one grid per other value."""
    values = {f: list(dict.fromkeys(r[f] for r in rows)) for f in SWEEP_FIELDS}
    varying = [f for f in SWEEP_FIELDS if len(values[f]) > 1] or ["batch_size"]
    down = varying[0]
    across = varying[1] if len(varying) > 1 else None
    rest = varying[2:]
    r0 = rows[0]
    fixed = [f"{_label(f)} {r0[f]}" for f in SWEEP_FIELDS if f not in varying and r0[f] is not None]
    flags = [name for name, key in (("per-layer update", "layerwise"), ("checkpointing", "checkpointing")) if r0[key]]
    lines = [" | ".join([r0["model"], r0["method"], r0["precision"], *fixed, *flags]), ""]
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[f] for f in rest), []).append(r)
    for key, group in groups.items():
        if rest:
            lines.append(", ".join(f"{_label(f)} {v}" for f, v in zip(rest, key)) + ":")
        if across is None:
            table = [[r[down], _cell(r), r["peak_phase"]] for r in group]
            headers = [_label(down), "peak GiB", "peak phase"]
        else:
            cells = {(r[down], r[across]): _cell(r) for r in group}
            table = [[d] + [cells[(d, a)] for a in values[across]] for d in values[down]]
            headers = [f"{_label(down)} \\ {_label(across)}"] + [str(a) for a in values[across]]
        lines += [_table(table, headers), ""]
    note = "Peak allocated GiB (device total and phases: --csv / --json)."
    if gpu is not None:
        note += f" '!': does not fit on {gpu.name} (device total)."
    lines.append(note)
    return "\n".join(lines)


# ---------------------------------------------------------------- plan

def plan_table(rows: list[PlanRow], config: TrainingConfig, min_headroom: int = 0,
               host_ram: int | None = None) -> str:
    money = lambda v, fmt: "-" if v is None else fmt.format(v)  # noqa: E731
    table = [[i, r.gpu.id, r.num_gpus, r.engine, g(r.per_gpu_bytes), g(r.capacity_bytes), signed(r.headroom_bytes),
              f"{r.max_batch_size:,}", money(r.price_per_hour_usd, "${:,.2f}"),
              money(r.price_purchase_usd, "${:,.0f}"), r.gpu.price_date or "-"]
             for i, r in enumerate(rows, 1)]
    headers = ["#", "gpu", "count", "engine", "GiB/GPU", "usable", "headroom", "max batch/GPU", "$/hour",
               "purchase", "price date"]
    lines = [config_line(config, per_gpu=True), "", _table(table, headers, left=0), ""]
    lines.append("engine: how PyTorch runs the least-sharded layout that fits: one GPU < DDP < DDP + "
                 "ZeroRedundancyOptimizer (zero1) < FSDP2 keeping parameters after forward (fsdp2-no-reshard) < "
                 "FSDP2 resharding after forward (fsdp2). GiB/GPU: the worst rank.")
    lines.append("Prices are approximate and dated (price date); $/hour and purchase are for all the GPUs. "
                 "Override them with --gpu-file.")
    if min_headroom:
        lines.append(f"Every GPU keeps at least {g(min_headroom)} GiB free (--min-headroom), max batch included.")
    if config.layerwise:
        lines.append("The per-layer update is single-GPU only (as in GaLore's public code): multi-GPU rows left out.")
    if config.offload != "none":
        lines.append(f"Host memory: {g(rows[0].host_bytes)} GiB on every row (pinned weight and gradient copies + optimizer "
                     f"state; --offload {config.offload}"
                     + (f"; fits in --host-ram {g(host_ram)} GiB" if host_ram is not None else "")
                     + "). CPU offload is modeled on one GPU only: multi-GPU rows left out.")
    return "\n".join(lines + bf16_note([r.gpu for r in rows], config.precision))
