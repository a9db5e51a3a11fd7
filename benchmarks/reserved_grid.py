"""Replay the validation grid's fake-tensor steps through the CUDA caching-allocator
model: predicted max_memory_reserved beside the allocated peak, per grid point.

    python benchmarks/reserved_grid.py [--grid small|ci] [--out benchmarks/results/reserved_grid.json]

For every FakeTensorMode point of the grid it runs ``validate(cfg, reserved=True)``
(the tracker logs every storage allocation and free of the three steps; the log is
replayed from an empty allocator), and records the measured allocated peak, the
replayed max_memory_allocated / max_memory_reserved, the estimator's allocated peak,
and the estimator's device-total reserve (memplan.estimator.reserved_bytes) with its
residual against the replay. One CPU thread.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from memplan.measure.grid import grid
from memplan.measure.validate import validate

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, out: Path) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for cfg in grid(name):
        if cfg.device != "fake":
            continue
        t0 = time.perf_counter()
        v = validate(cfg, reserved=True).to_dict()
        m, r = v["measured"], v["measured"]["reserved"]
        rows.append({"model": cfg.model, "method": cfg.method, "layerwise": cfg.layerwise,
                     "checkpointing": cfg.checkpointing, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
                     "peak_phase": m["peak_phase"], "measured_peak_allocated": m["peak_bytes"],
                     "replay_max_allocated": r["max_allocated"], "replay_max_reserved": r["max_reserved"],
                     "replay_segments": r["segments"], "allocations": r["allocations"],
                     "estimate_peak_allocated": v["estimate"]["peak_bytes"],
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps({"grid": name, "points": rows}, indent=1) + "\n")  # after every point
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="small")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"reserved_grid_{a.grid}.json")
    run(a.grid, out)
    print(f"wrote {out}")
