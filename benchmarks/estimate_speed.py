"""Speed of the estimator: wall time of the `memplan estimate` CLI (process start to
exit) and estimates per second through the library, over distinct configurations.

The in-process figure (issue 14: at least 100,000 per second) counts calls of
`memplan.estimate(profile, method, ...)` on configurations that are all different
(20,000 drawn from models x methods x implementations x ranks x batch sizes x
sequence lengths x precisions x per-layer update x checkpointing, no two alike: nothing is a
repeat a result cache could serve), each on a GPU, reading every result's device
total and fit (so no work can be left undone). The planner's searches, the sweeps,
the advisor and the dashboard all sit on this call. It also times the planner's own
path, `estimate_config` on configurations that differ in the batch size only.

Targets: CLI under 0.3 s on the 2-core dev machine; at least 100,000 estimates per
second in-process. Prints a table and writes benchmarks/results/estimate_speed.json.

    python benchmarks/estimate_speed.py [--runs 20] [--seconds 3]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
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


def distinct_configs(count: int = 20_000, seed: int = 0) -> list[tuple]:
    """`count` different valid combinations, shuffled: (profile, method, options) tuples."""
    from memplan.impls import impls_of

    models = [memplan.load_model(m) for m in ("llama-60m", "llama-350m", "llama-1b", "llama-7b", "llama3-8b",
                                              "mistral-7b", "llama-13b")]
    combos = []
    for model, method in itertools.product(models, memplan.METHODS):
        impls = [None, *sorted(impls_of(method))]
        ranks = [64, 128, 256] if memplan.METHODS[method].uses_rank else [128]
        combos += [(model, method, *rest) for rest in itertools.product(
            impls, ranks, [1, 2, 4, 8], [256, 1024, 2048], ["bf16", "mixed"], [False, True], [False, True])]
    random.Random(seed).shuffle(combos)
    out = []
    for model, method, impl, rank, b, s, prec, lw, ck in combos:
        opts = dict(rank=rank, batch_size=b, seq_len=s, precision=prec, layerwise=lw, checkpointing=ck)
        if impl is not None:
            opts["impl"] = impl
        try:
            memplan.estimate(model, method, **opts)
        except memplan.MemplanError:
            continue  # a combination the estimator refuses
        out.append((model, method, opts))
        if len(out) == count:
            break
    return out


def library_rate(configs: list[tuple], seconds: float) -> tuple[float, int]:
    """memplan.estimate over distinct configurations, each result's device total and fit read.

    The configurations were estimated once while being listed (to drop refused ones), so the
    estimator's per-model tables are built: this is the steady state of a sweep or a planner.
    """
    gpu = memplan.load_gpu("rtx-4090")
    n, total = 0, 0
    t0 = time.perf_counter()
    while n < len(configs):
        for model, method, opts in configs[n:n + 1000]:
            est = memplan.estimate(model, method, gpu=gpu, **opts)
            total += est.device_total_bytes + est.fit().headroom_bytes
        n = min(n + 1000, len(configs))
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0), n


def planner_rate(configs: list[tuple], seconds: float) -> tuple[float, int]:
    """The planner's path: estimate_config on a configuration with another batch size (a bisection,
    memplan/planner.py: make_config(config, batch_size=n))."""
    from memplan.estimator import estimate_config, make_config

    gpu = memplan.load_gpu("rtx-4090")
    bases = [make_config(model, method, **opts) for model, method, opts in configs[:2000]]
    n = 0
    t0 = time.perf_counter()
    for batch in itertools.count(9):
        for c in bases:
            total = estimate_config(make_config(c, batch_size=batch), gpu).device_total_bytes
        n += len(bases)
        if time.perf_counter() - t0 > seconds:
            break
    del total
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each in-process measurement")
    args = ap.parse_args()
    times = cli_times(args.runs)
    configs = distinct_configs()
    rate, n = library_rate(configs, args.seconds)
    prate, pn = planner_rate(configs, args.seconds)
    result = {
        "cli_median_s": statistics.median(times), "cli_min_s": min(times), "cli_max_s": max(times),
        "cli_runs": len(times), "estimates_per_s": rate, "estimates": n, "distinct_configs": len(configs),
        "planner_path_per_s": prate, "planner_path_estimates": pn,
        "targets": {"cli_s": 0.3, "estimates_per_s": 100_000},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m": os.getloadavg()[0]},
    }
    result["pass"] = result["cli_median_s"] < 0.3 and rate >= 100_000
    print(f"memplan estimate CLI: median {result['cli_median_s']:.3f} s (min {min(times):.3f}, "
          f"max {max(times):.3f}, {len(times)} runs)   target < 0.3 s")
    print(f"library: {rate:,.0f} estimates/s ({n:,} distinct configurations of {len(configs):,})   "
          "target >= 100,000/s")
    print(f"planner path (estimate_config, batch size changed): {prate:,.0f} estimates/s")
    print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("PASS" if result["pass"] else "FAIL")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
