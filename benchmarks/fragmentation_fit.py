"""Fit the device-total rule of memplan/reserve.py to allocator replays, and report its
residual per point.

    python benchmarks/fragmentation_fit.py

Data (each point's fragmentation = replayed max_memory_reserved - replayed
max_memory_allocated, the allocator's own excess):

- ``benchmarks/results/reserved_grid_small.json``: the validation grid's FakeTensorMode
  steps replayed through the allocator model (benchmarks/reserved_grid.py), and
  ``reserved_grid_layerwise.json``: two more per-layer-update points (llama-1b GaLore and
  AdamW, fake, ``validate --reserved``);
- ``benchmarks/results/cuda_fake_replay.json``: the real H200 runs' steps (HF classes, real
  optimizer libraries) rerun under FakeTensorMode on the CPU and replayed
  (benchmarks/cuda_fake_replay.py), next to the real max_memory_reserved.

Features, from memplan's estimate of the same configuration: G = gradient bytes (the
most alive at once), A = saved activations (forward), K = one checkpointed block's
activations (0 without checkpointing), L = every gradient's bytes with the per-layer
update (0 without; they are made and freed one by one among the activations).
fragmentation ~ a G + b A + c K + d L, least squares
with non-negative coefficients (the target is the replayed fragmentation, or the real
GPU's for the CUDA points that cannot run under fake tensors). The residual of the reserved bytes is reported against
the replay (fake points) and against the real GPU (CUDA points). Writes
``benchmarks/results/fragmentation_fit.json``; memplan/reserve.py carries the rounded
coefficients.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
GiB = 1 << 30


def _features(est, checkpointing: bool) -> tuple[float, float, float, float]:
    from memplan.activations import activations
    from memplan.estimator import PRECISIONS
    ph = est.phases
    grads = max(p["gradients"] for p in ph.values())
    acts = ph["forward"]["activations"]
    c = est.config
    prec = PRECISIONS[c.precision]
    block = 0
    if checkpointing:
        block = activations(c.model, c.batch_size, c.seq_len, prec.compute, prec.param, 0, 0).block
    layerwise = est.trainable_count * prec.grad if c.layerwise else 0  # every gradient, made and freed one by one
    return float(grads), float(acts), float(block), float(layerwise)


def grid_points() -> list[dict]:
    import memplan
    from memplan.measure.grid import RANKS
    from memplan.measure.validate import ValidateConfig
    out = []
    rows = []
    for name in ("reserved_grid_small.json", "reserved_grid_layerwise.json"):
        if (RESULTS / name).is_file():
            rows += json.loads((RESULTS / name).read_text())["points"]
    for r in rows:
        cfg = ValidateConfig(model=r["model"], method=r["method"], rank=RANKS[r["model"]], batch_size=r["batch_size"],
                             seq_len=r["seq_len"], layerwise=r["layerwise"], checkpointing=r["checkpointing"])
        est = memplan.estimate(cfg.model, cfg.method, **cfg.estimator_options())
        out.append({"point": f"grid {r['model']} {r['method']} layerwise={r['layerwise']} "
                             f"ckpt={r['checkpointing']} {r['batch_size']}x{r['seq_len']}",
                    "x": _features(est, r["checkpointing"]),
                    "replay_allocated": r["replay_max_allocated"], "replay_reserved": r["replay_max_reserved"],
                    "estimate_peak": None, "real_reserved": None, "real_allocated": None})
    return out


def cuda_points() -> list[dict]:
    import cuda_check as cc
    from cuda_compare import estimate_for
    path = RESULTS / "cuda_fake_replay.json"
    if not path.is_file():
        return []
    out = []
    for r in json.loads(path.read_text())["points"]:
        fr = r.get("fake_replay", {})
        s = cc.POINTS[r["point"]]
        est, _missing = estimate_for({"settings": s})  # the options benchmarks/cuda_compare.py passes
        out.append({"point": f"cuda {r['point']}", "x": _features(est, bool(s.get("checkpointing"))),
                    "replay_allocated": fr.get("max_allocated"), "replay_reserved": fr.get("max_reserved"),
                    "estimate_peak": est.peak_bytes, "real_reserved": r["real"]["max_reserved"],
                    "real_allocated": r["real"]["max_allocated"], "estimate_reserved": est.reserved_bytes})
    return out


def nnls(X, y):
    """Least squares with coefficients >= 0 (three features: try every subset)."""
    import itertools

    import numpy as np
    best = None
    for k in range(1, X.shape[1] + 1):
        for cols in itertools.combinations(range(X.shape[1]), k):
            c, *_ = np.linalg.lstsq(X[:, cols], y, rcond=None)
            if (c < 0).any():
                continue
            full = np.zeros(X.shape[1])
            full[list(cols)] = c
            err = float(((X @ full - y) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, full)
    return best[1]


def main() -> None:
    import numpy as np
    pts = grid_points() + cuda_points()
    # the replayed fragmentation where the step runs under fake tensors; the real GPU's where it does not
    # (bitsandbytes' 8-bit optimizers and peft cannot run under FakeTensorMode)
    fit = [p for p in pts if p["replay_reserved"] or p["real_reserved"]]
    X = np.array([p["x"] for p in fit])
    y = np.array([(p["replay_reserved"] - p["replay_allocated"]) if p["replay_reserved"]
                  else (p["real_reserved"] - p["real_allocated"]) for p in fit], float)
    coef = nnls(X, y)
    rows = []
    for p in pts:
        pred = float(np.array(p["x"]) @ coef)
        row = {"point": p["point"], "gradients": p["x"][0], "activations": p["x"][1], "checkpoint_block": p["x"][2],
               "layerwise_gradients": p["x"][3], "fragmentation_predicted": int(pred)}
        if p["replay_reserved"]:
            frag = p["replay_reserved"] - p["replay_allocated"]
            row.update(replay_fragmentation=frag,
                       residual_of_replayed_reserved=round((pred - frag) / p["replay_reserved"], 4))
        if p["real_reserved"]:
            frag = p["real_reserved"] - p["real_allocated"]
            row.update(real_fragmentation=frag, real_reserved=p["real_reserved"],
                       residual_of_real_reserved=round((pred - frag) / p["real_reserved"], 4),
                       estimate_reserved=p.get("estimate_reserved"),
                       estimate_reserved_error=round((p["estimate_reserved"] - p["real_reserved"])
                                                     / p["real_reserved"], 4) if p.get("estimate_reserved") else None)
        rows.append(row)
        print(f"{p['point'][:60]:60s} frag pred {pred / GiB:6.2f}  replay "
              f"{row.get('replay_fragmentation', 0) / GiB:6.2f} ({row.get('residual_of_replayed_reserved', '-')})  real "
              f"{row.get('real_fragmentation', 0) / GiB:6.2f} ({row.get('residual_of_real_reserved', '-')})")
    print("coefficients (gradients, activations, checkpoint_block, layerwise_gradients):",
          [round(float(c), 3) for c in coef])
    out = {"coefficients": {"gradients": float(coef[0]), "activations": float(coef[1]),
                            "checkpoint_block": float(coef[2]), "layerwise_gradients": float(coef[3])},
           "points_fitted": len(fit), "points": rows}
    (RESULTS / "fragmentation_fit.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'fragmentation_fit.json'}")


if __name__ == "__main__":
    main()
