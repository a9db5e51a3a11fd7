"""How long `memplan validate --device fake` takes on the large models, and where the time goes.

Runs the command a user runs, as a fresh process (torch import included):

    memplan validate --model llama-7b --device fake --json      (target: under 15 s)
    memplan validate --model llama-13b --device fake --json     (target: under 30 s)

and records wall time and CPU time (user + system: on a shared machine the wall time
stretches with the load; the CPU time does not, much), plus the measured bytes of
each point, so that a change to the measurement code can be checked byte for byte
against an earlier results file (--compare OLD.json). With --profile it also splits
one in-process run of the first model into its parts: torch import, FakeTensorMode
start, model and optimizer construction, and the three steps.

    python benchmarks/validate_speed.py [--runs 1] [--compare old.json] [--profile]

Prints a table and writes benchmarks/results/validate_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "validate_speed.json"
TARGETS = {"llama-7b": 15.0, "llama-13b": 30.0}

PROFILE = r"""
import json, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
parts = {}
def mark(name):
    global t0, c0
    parts[name] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    t0 = time.perf_counter(); c0 = time.process_time()
import importlib
import torch
torch.set_num_threads(1)
import memplan.models, memplan.optim
V = importlib.import_module("memplan.measure.validate")  # the module (memplan.measure.validate: a function)
from memplan.measure.step import measure_step
mark("import torch and memplan")
mode = V._fake_mode()
mark("FakeTensorMode start (imports torch._dynamo)")
cfg = V.ValidateConfig(model=sys.argv[1], device="fake")
with mode:
    model, opt, batch, amp = V.build(cfg)
    mark("build model and optimizer")
    for step in range(3):
        measure_step(model, opt, batch, V._loss, autocast_dtype=amp)
        mark(f"step {step} ({'warm-up' if step == 0 else 'ordinary' if step == 1 else 'refresh'})")
print(json.dumps(parts))
"""


def memplan_exe() -> str:
    exe = Path(sys.executable).with_name("memplan")
    return str(exe) if exe.is_file() else (shutil.which("memplan") or "memplan")


def timed(cmd: list[str]) -> tuple[float, float, str]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode not in (0, 1):  # 1: a target failed, still a measurement
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, r.stdout


def bytes_of(point: dict) -> dict:
    """The figures a change to the measurement code must not move."""
    return {"estimate": point["estimate"], "measured": point["measured"], "error": point["error"],
            "passed": point["passed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="fresh processes per model")
    ap.add_argument("--models", default="llama-7b,llama-13b")
    ap.add_argument("--compare", type=Path, default=None, help="an earlier results file: are the bytes the same?")
    ap.add_argument("--profile", action="store_true", help="split one run of the first model into its parts")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    result = {"runs": args.runs, "models": {}, "machine": {
        "python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "load_avg_1m_start": os.getloadavg()[0]}}
    for model in models:
        cmd = [memplan_exe(), "validate", "--model", model, "--device", "fake", "--json"]
        walls, cpus, point = [], [], None
        for _ in range(args.runs):
            wall, cpu, out = timed(cmd)
            walls.append(wall)
            cpus.append(cpu)
            point = json.loads(out)
        result["models"][model] = {
            "command": " ".join(["memplan", *cmd[1:]]), "wall_median_s": statistics.median(walls),
            "cpu_median_s": statistics.median(cpus), "wall_s": walls, "cpu_s": cpus,
            "target_s": TARGETS.get(model), "passed_validation": point["passed"], "bytes": bytes_of(point)}
    if args.profile:
        r = subprocess.run([sys.executable, "-c", PROFILE, models[0]], capture_output=True, text=True, cwd=ROOT,
                           check=True)
        result["profile"] = {"model": models[0], "parts": json.loads(r.stdout.strip().splitlines()[-1])}
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    if args.compare is not None:
        old = json.loads(args.compare.read_text())["models"]
        result["same_bytes_as"] = {"file": str(args.compare), "models": {
            m: old[m]["bytes"] == r["bytes"] for m, r in result["models"].items() if m in old}}

    print(f"{'model':<12}{'wall s':>9}{'cpu s':>9}{'target s':>10}  validation")
    for m, r in result["models"].items():
        print(f"{m:<12}{r['wall_median_s']:>9.1f}{r['cpu_median_s']:>9.1f}{r['target_s'] or 0:>10.0f}  "
              f"{'PASS' if r['passed_validation'] else 'FAIL'}   {r['command']}")
    if "profile" in result:
        print(f"\none in-process run of {models[0]}, by part:")
        for name, p in result["profile"]["parts"].items():
            print(f"  {name:<45}{p['wall_s']:>7.2f} s wall {p['cpu_s']:>7.2f} s cpu")
    if "same_bytes_as" in result:
        print("same bytes as", args.compare, result["same_bytes_as"]["models"])
    print(f"load average (1 min): {result['machine']['load_avg_1m_start']:.1f} at the start, "
          f"{result['machine']['load_avg_1m_end']:.1f} at the end, on {os.cpu_count()} CPUs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
