"""Speed of the estimator: wall time of the `memplan estimate` CLI (process start to
exit) and estimates per second through the library.

Targets (issue 2): CLI under 0.3 s on the 2-core dev machine; at least 5,000
estimates per second in-process. Prints a table and writes
benchmarks/results/estimate_speed.json.

    python benchmarks/estimate_speed.py [--runs 20]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import memplan

OUT = Path(__file__).parent / "results" / "estimate_speed.json"


def cli_times(runs: int) -> list[float]:
    exe = shutil.which("memplan") or str(Path(sys.executable).with_name("memplan"))
    cmd = [exe, "estimate", "--model", "llama-7b", "--method", "golore", "--rank", "128", "--gpu", "rtx-4090"]
    subprocess.run(cmd, check=True, capture_output=True)  # warm the file cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def library_rate(seconds: float = 2.0) -> tuple[float, int]:
    """Distinct configurations (methods x ranks x batches x seq lens x flags), no result caching."""
    grid = list(itertools.product(
        ["llama-60m", "llama-1b", "llama-7b", "llama3-8b"], list(memplan.METHODS), [64, 128, 256],
        [1, 2, 4, 8], [256, 1024, 2048], [False, True], [False, True]))
    profiles = {m: memplan.load_model(m) for m in ("llama-60m", "llama-1b", "llama-7b", "llama3-8b")}
    n = 0
    t0 = time.perf_counter()
    for model, method, rank, b, s, lw, ck in itertools.cycle(grid):
        memplan.estimate(profiles[model], method, rank=rank, batch_size=b, seq_len=s, layerwise=lw,
                         checkpointing=ck, gpu="rtx-4090")
        n += 1
        if n % 500 == 0 and time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    times = cli_times(args.runs)
    rate, n = library_rate()
    result = {
        "cli_median_s": statistics.median(times), "cli_min_s": min(times), "cli_max_s": max(times),
        "cli_runs": len(times), "estimates_per_s": rate, "estimates": n,
        "targets": {"cli_s": 0.3, "estimates_per_s": 5000},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    result["pass"] = result["cli_median_s"] < 0.3 and rate >= 5000
    print(f"memplan estimate CLI: median {result['cli_median_s']:.3f} s (min {min(times):.3f}, "
          f"max {max(times):.3f}, {len(times)} runs)   target < 0.3 s")
    print(f"library: {rate:,.0f} estimates/s ({n} distinct-config estimates)   target >= 5,000/s")
    print("PASS" if result["pass"] else "FAIL")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
