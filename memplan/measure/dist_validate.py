"""Multi-GPU layouts: the estimate (memplan.parallel) against runs of PyTorch's engine.

    v = validate_dist(DistConfig(model="llama-60m", layout="zero1", num_gpus=4))
    v["passed"], v["error"]["peak"], v["ranks"]        # per-rank measurements

The estimate is the worst rank's; it is compared with the measured rank of highest peak:
parameters, gradients, optimizer states and projectors to the byte (gradients: what is
held at the end of backward, DDP's buckets included), the peak within
``DIST_TOLERANCE`` and in the same phase; the split of the peak moment between
activations and transients is reported, not judged. ``dist_grid()`` is ``memplan validate --grid
dist`` (see there for which points).
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace

from memplan.measure.distributed import DistConfig, measure_fake, measure_gloo
from memplan.measure.validate import BUNDLED_AS, EXACT, compare, summarize_estimate, summarize_measured

DIST_TOLERANCE = 0.02
PROJECTION = ("galore", "golore", "sumo", "gradnormlorp")


def estimate_dist(cfg: DistConfig):
    """The worst rank's estimate of ``cfg`` (a ``ShardedEstimate``)."""
    import memplan
    from memplan.methods import get_method
    from memplan.parallel import shard
    method = get_method(cfg.method)
    opts = dict(update_gap=2, precision=cfg.precision, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                checkpointing=cfg.checkpointing, impl=BUNDLED_AS.get(method.name, "bundled"))
    if method.uses_rank:
        opts["rank"] = cfg.rank
    est = memplan.estimate(cfg.model, method.name, **opts)
    return shard(est, cfg.layout, cfg.num_gpus, bucket_view=cfg.bucket_view)


def check(cfg: DistConfig) -> None:
    """Refuse (``MemplanError``) what the layout rules refuse, before anything runs."""
    from memplan.parallel import check_layout
    check_layout(cfg.layout, cfg.num_gpus, False, cfg.method, cfg.precision)


def _summary_estimate(est) -> dict:
    out = summarize_estimate(est)
    for c in EXACT:  # what is held at the optimizer step: the shards, DDP's buckets and .grad, the state
        out["categories"][c] = est.phases["optimizer_step"][c]
    out.update(layout=est.layout, engine=est.engine, worst_rank=est.rank)
    return out


def judge(cfg: DistConfig, est, ranks: list[dict], seconds: float) -> dict:
    """Compare the estimate with the measured worst rank; the result as a JSON-ready dict."""
    errors = [r["error"] for r in ranks if "error" in r]
    base = {"config": asdict(cfg), "seconds": round(seconds, 2)}
    if errors:
        return {**base, "passed": False, "failures": errors[:1], "estimate": None, "measured": None, "error": None,
                "ranks": None}
    summaries = [summarize_measured({"phases": r["phases"], "persistent": r["persistent"]}) for r in ranks]
    worst = max(range(len(ranks)), key=lambda i: (summaries[i]["peak_bytes"], -i))
    e = _summary_estimate(est)
    m = summaries[worst]
    error, failures = compare(e, m)
    # the targets here: the exact categories, the peak (DIST_TOLERANCE) and its phase. The split of the
    # peak moment between activations and transients is reported, not judged: under FSDP2 the moment
    # differs by a few MiB between the engine's own tensors and a backend's (gloo) buffers
    failures = [f for f in failures if f.split(":")[0] in EXACT or f.startswith("peak phase")]
    if abs(error["peak"]["relative"]) > DIST_TOLERANCE:
        failures.append(f"peak: {error['peak']['relative']:+.2%} (limit {DIST_TOLERANCE:.0%})")
    m = {**m, "rank": worst if cfg.device == "cpu" else 0}
    per_rank = [{"rank": i, "peak_bytes": s["peak_bytes"], "peak_phase": s["peak_phase"],
                 "persistent": r["persistent"], "phases": r["phases"],
                 "backend_bytes": r.get("backend_bytes", 0)} for i, (s, r) in enumerate(zip(summaries, ranks))]
    return {**base, "passed": not failures, "failures": failures, "estimate": e, "measured": m, "error": error,
            "ranks": per_rank}


def validate_dist(cfg: DistConfig) -> dict:
    check(cfg)
    est = estimate_dist(cfg)
    t0 = time.perf_counter()
    ranks = measure_fake(cfg) if cfg.device == "fake" else measure_gloo([cfg])[0]
    return judge(cfg, est, ranks, time.perf_counter() - t0)


# --------------------------------------------------------------------------- grid
_REAL = (("llama-60m", 128), ("llama-130m", 256))
_FAKE = (("llama-7b", 1024), ("llama-13b", 1024))


def dist_grid() -> list[DistConfig]:
    """``--grid dist``: see the module doc. Real runs in fp32 (this CPU's bf16 matmuls are slow), batch
    2 x 128: at world 2, llama-60m gets every layout with AdamW and every projection method under DDP
    and zero1 (FSDP2 refuses them), llama-130m every layout with AdamW (and GaLore under zero1); world 4
    a subset of the same. Fake runs: FSDP2 (both reshard settings) on llama-7b and llama-13b, world 8,
    bf16, batch 1 x 2048 (the issue's 7B setting)."""
    grid = {  # (world, model): [(layout, bucket_view, methods)]
        (2, "llama-60m"): [("ddp", False, ("adamw",) + PROJECTION), ("ddp", True, ("adamw",)),
                           ("zero1", False, ("adamw",) + PROJECTION), ("fsdp2", False, ("adamw",)),
                           ("fsdp2-no-reshard", False, ("adamw",))],
        (2, "llama-130m"): [("ddp", False, ("adamw",)), ("ddp", True, ("adamw",)), ("zero1", False, ("adamw", "galore")),
                            ("fsdp2", False, ("adamw",)), ("fsdp2-no-reshard", False, ("adamw",))],
        (4, "llama-60m"): [("ddp", False, ("adamw", "galore")), ("ddp", True, ("adamw",)),
                           ("zero1", False, ("adamw", "galore")), ("fsdp2", False, ("adamw",)),
                           ("fsdp2-no-reshard", False, ("adamw",))],
        (4, "llama-130m"): [("ddp", False, ("adamw",)), ("zero1", False, ("adamw",)), ("fsdp2", False, ("adamw",))],
    }
    ranks = dict(_REAL)
    out = [DistConfig(model=model, method=method, rank=ranks[model], precision="fp32", batch_size=2, seq_len=128,
                      layout=layout, num_gpus=world, device="cpu", bucket_view=view)
           for (world, model), rows in grid.items() for layout, view, methods in rows for method in methods]
    for model, rank in _FAKE:
        for layout in ("fsdp2", "fsdp2-no-reshard"):
            out.append(DistConfig(model=model, method="adamw", rank=rank, precision="bf16", batch_size=1,
                                  seq_len=2048, layout=layout, num_gpus=8, device="fake"))
    return out


def issue_rows() -> list[DistConfig]:
    """The runs of issue 10's table: llama-60m, bf16, batch 2 x 128, AdamW (and GaLore under DDP)."""
    base = DistConfig(model="llama-60m", method="adamw", precision="bf16", batch_size=2, seq_len=128, device="cpu")
    rows = [replace(base, layout="ddp", num_gpus=n) for n in (2, 4)]
    rows += [replace(base, method="galore", layout="ddp", num_gpus=n) for n in (2, 4)]
    rows += [replace(base, layout="ddp", num_gpus=2, bucket_view=True)]
    rows += [replace(base, layout="zero1", num_gpus=n) for n in (2, 4)]
    rows += [replace(base, layout="fsdp2", num_gpus=n) for n in (2, 4)]
    rows += [replace(base, layout="fsdp2-no-reshard", num_gpus=2)]
    rows += [DistConfig(model="llama-7b", method="adamw", precision="bf16", batch_size=1, seq_len=2048,
                        layout="fsdp2", num_gpus=8, device="fake")]
    return rows


def run_configs(cfgs: list[DistConfig], on_result=None) -> list[dict]:
    """Validate every config: gloo ones batched by world size (one set of processes each)."""
    results: dict[int, dict] = {}

    def done(i, v):
        results[i] = v
        if on_result is not None:
            on_result(v)

    ests = {}
    for i, c in enumerate(cfgs):
        try:
            check(c)
            ests[i] = estimate_dist(c)
        except Exception as e:  # a refused combination is a recorded failure, not a crash
            done(i, {"config": asdict(c), "passed": False, "failures": [f"{type(e).__name__}: {e}"],
                     "estimate": None, "measured": None, "error": None, "ranks": None, "seconds": 0})
    for world in sorted({c.num_gpus for i, c in enumerate(cfgs) if i in ests and c.device == "cpu"}):
        idx = [i for i, c in enumerate(cfgs) if i in ests and c.device == "cpu" and c.num_gpus == world]
        t0 = [time.perf_counter()]

        def got(j, ranks, idx=idx, t0=t0):
            i = idx[j]
            done(i, judge(cfgs[i], ests[i], ranks, time.perf_counter() - t0[0]))
            t0[0] = time.perf_counter()
        try:
            measure_gloo([cfgs[i] for i in idx], on_result=got)
        except Exception as e:
            for i in idx:
                if i not in results:
                    done(i, {"config": asdict(cfgs[i]), "passed": False, "failures": [f"{type(e).__name__}: {e}"],
                             "estimate": None, "measured": None, "error": None, "ranks": None, "seconds": 0})
    for i, c in enumerate(cfgs):
        if i in ests and c.device == "fake":
            t0 = time.perf_counter()
            try:
                done(i, judge(c, ests[i], measure_fake(c), time.perf_counter() - t0))
            except Exception as e:
                done(i, {"config": asdict(c), "passed": False, "failures": [f"{type(e).__name__}: {e}"],
                         "estimate": None, "measured": None, "error": None, "ranks": None, "seconds": 0})
    return [results[i] for i in range(len(cfgs))]


def summarize_dist(results: list[dict]) -> list[dict]:
    """Per layout (engine) and world: points, passes, worst exact-category bytes, worst / median peak error."""
    import statistics
    groups: dict[tuple, list] = {}
    for r in results:
        c = r["config"]
        key = (c["layout"] + (" bucket_view" if c["bucket_view"] else ""), c["num_gpus"], c["device"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (layout, world, device), rs in groups.items():
        ok = [r for r in rs if r["error"]]
        peaks = [abs(r["error"]["peak"]["relative"]) for r in ok]
        exact = [abs(r["error"]["categories"][c]["bytes"]) for r in ok for c in EXACT]
        rows.append({"layout": layout, "world": world, "device": device, "points": len(rs),
                     "passed": sum(r["passed"] for r in rs), "exact_worst_bytes": max(exact) if exact else None,
                     "peak_worst": max(peaks) if peaks else None,
                     "peak_median": statistics.median(peaks) if peaks else None,
                     "models": sorted({r["config"]["model"] for r in rs}),
                     "methods": sorted({r["config"]["method"] for r in rs})})
    return rows
