"""How fast the planner answers: wall time and estimator calls per query.

    python benchmarks/planner_speed.py [--out benchmarks/results/planner_speed.json]

Prints a table and writes the numbers as JSON. The searches bisect, so the number
of estimator calls grows with log2 of the answer, not with the answer.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tabulate import tabulate

from memplan import planner

QUERIES = [
    ("max_batch_size llama-7b galore8bit per-layer+ckpt rtx-4090",
     lambda: planner.max_batch_size("llama-7b", "rtx-4090", "galore8bit", layerwise=True, checkpointing=True)),
    ("max_seq_len llama-7b galore8bit per-layer+ckpt rtx-4090",
     lambda: planner.max_seq_len("llama-7b", "rtx-4090", "galore8bit", layerwise=True, checkpointing=True)),
    ("max_rank llama-7b golore per-layer+ckpt rtx-4090",
     lambda: planner.max_rank("llama-7b", "rtx-4090", "golore", layerwise=True, checkpointing=True)),
    ("max_seq_len llama-60m adamw h200 (past its 1024 positions)",
     lambda: planner.max_seq_len("llama-60m", "h200", "adamw")),
    ("fit_report llama-7b rtx-4090, all methods x 4 settings",
     lambda: len(planner.fit_report("llama-7b", "rtx-4090"))),
    ("plan llama-13b galore8bit b4 s2048 ckpt, all GPUs x 1/2/4/8",
     lambda: len(planner.plan("llama-13b", "galore8bit", batch_size=4, checkpointing=True))),
]


def count_calls():
    calls = {"n": 0}
    inner = planner.estimate_config

    def counted(*a, **k):
        calls["n"] += 1
        return inner(*a, **k)

    planner.estimate_config = counted
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "planner_speed.json"))
    args = ap.parse_args()
    calls = count_calls()
    rows = []
    for name, query in QUERIES:
        calls["n"] = 0
        t = time.perf_counter()
        answer = query()
        ms = (time.perf_counter() - t) * 1000
        rows.append({"query": name, "answer": answer, "estimator_calls": calls["n"], "ms": round(ms, 1)})
    print(tabulate([list(r.values()) for r in rows], ["query", "answer", "estimator calls", "ms"],
                   disable_numparse=True, colalign=("left", "right", "right", "right")))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
