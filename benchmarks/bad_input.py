"""Time and memory of every bad input (tests/bad_input_cases.py): the CLI and the dashboard.

    python benchmarks/bad_input.py      # prints a table, writes benchmarks/results/bad_input.json

The bound (issue 11): no input makes the CLI or the dashboard run longer than a
second or grow past a few hundred MB. Each CLI case runs as its own process
(`python -m memplan.cli.main ...`): wall time and peak RSS from the OS (os.wait4),
Python's start-up and imports included (wall time on a shared machine mostly
measures its load, so the bound is judged on CPU time); and in-process through click's CliRunner
(the time memplan itself spends). Each dashboard upload is timed through
Streamlit's AppTest (one script run with the file) with tracemalloc's peak of
Python allocations during that run.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bad_input_cases import CLI, UPLOADS, cli_args, upload, write_files  # noqa: E402

LIMIT_SECONDS = 1.0
LIMIT_MIB = 300


def gzip_bomb(path: Path) -> None:
    """1.5 MB of gzip that inflates to 1.5 GiB: too heavy for the test suite, measured here."""
    import gzip

    with gzip.open(path, "wb", compresslevel=9) as f:
        chunk = bytes(64 << 20)
        for _ in range(24):
            f.write(chunk)


HEAVY = [("snapshot: gzip bomb (1.5 MB -> 1.5 GiB)", "bomb.pickle.gz", gzip_bomb, 2)]


def deepest(path: Path) -> None:
    """The deepest and widest config the bounds allow (256 layers): answered, so it must be fast too."""
    cfg = json.loads((ROOT / "profiles" / "models" / "llama-7b.json").read_text())
    cfg.update(num_hidden_layers=256, hidden_size=16384, intermediate_size=53248, num_attention_heads=128,
               num_key_value_heads=8, vocab_size=256000)
    path.write_text(json.dumps(cfg))


# the largest inputs the bounds allow: every command answers them (exit 0 or 3) within the bound
ALLOWED = [(f"allowed extreme: {cmd[0]} on 256 layers", cmd) for cmd in (
    ["estimate", "--model", "{f}", "--method", "galore"], ["compare", "--model", "{f}"],
    ["fit", "--model", "{f}", "--gpu", "h200"], ["plan", "--model", "{f}", "--method", "galore8bit"],
    ["advise", "--model", "{f}", "--gpu", "h200"])]


def run_process(args: list[str]) -> tuple[int, float, float, float]:
    """(exit code, wall seconds, CPU seconds, peak RSS in MiB) of `python -m memplan.cli.main args` on its own."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "memplan.cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: KiB


def run_inprocess(args: list[str]) -> float:
    from click.testing import CliRunner

    from memplan.cli.main import cli

    t0 = time.perf_counter()
    CliRunner().invoke(cli, args)
    return time.perf_counter() - t0


def run_upload(up) -> tuple[float, float]:
    """(seconds, peak MiB of Python allocations) of the dashboard run that reads `up`."""
    from streamlit.testing.v1 import AppTest

    from memplan.app import state

    at = AppTest.from_file(str(ROOT / "app" / "dashboard.py"), default_timeout=60)
    at.run()
    upload(at, up, state.UPLOAD)
    tracemalloc.start()
    t0 = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert len(at.error) == 1 and not at.exception, up.name
    return seconds, peak


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_files(folder)
        run_inprocess(["models"])  # imports done once, as in a running process
        for case in CLI:
            args = cli_args(case, folder)
            code, wall, cpu, rss = run_process(args)
            rows.append({"kind": "cli", "name": case.name, "args": " ".join(case.args)[:160], "exit_code": code,
                         "expected_exit_code": case.code, "process_seconds": round(wall, 3),
                         "process_cpu_seconds": round(cpu, 3),
                         "process_peak_rss_mib": round(rss, 1), "inprocess_seconds": round(run_inprocess(args), 4)})
        deep = Path(folder) / "deepest.json"
        deepest(deep)
        for name, cmd in ALLOWED:
            args = [a.replace("{f}", str(deep)) for a in cmd]
            code, wall, cpu, rss = run_process(args)
            rows.append({"kind": "cli", "name": name, "args": " ".join(cmd), "exit_code": code,
                         "expected_exit_code": code if code in (0, 3) else 0, "process_seconds": round(wall, 3),
                         "process_cpu_seconds": round(cpu, 3), "process_peak_rss_mib": round(rss, 1),
                         "inprocess_seconds": round(run_inprocess(args), 4)})
        for name, file, make, expected in HEAVY:  # process only: measured, not run by the tests
            make(Path(folder) / file)
            code, wall, cpu, rss = run_process(["snapshot", str(Path(folder) / file)])
            rows.append({"kind": "cli", "name": name, "args": f"snapshot {file}", "exit_code": code,
                         "expected_exit_code": expected, "process_seconds": round(wall, 3),
                         "process_cpu_seconds": round(cpu, 3), "process_peak_rss_mib": round(rss, 1),
                         "inprocess_seconds": round(wall, 3)})
    os.chdir(tempfile.gettempdir())  # no default validation report is picked up
    for up in UPLOADS:
        seconds, peak = run_upload(up)
        rows.append({"kind": "dashboard", "name": up.name, "bytes": len(up.content), "run_seconds": round(seconds, 3),
                     "python_peak_mib": round(peak, 1)})
    cli_rows = [r for r in rows if r["kind"] == "cli"]
    app_rows = [r for r in rows if r["kind"] == "dashboard"]
    slow_cli = max(cli_rows, key=lambda r: r["inprocess_seconds"])
    slow_proc = max(cli_rows, key=lambda r: r["process_seconds"])
    slow_cpu = max(cli_rows, key=lambda r: r["process_cpu_seconds"])
    big = max(cli_rows, key=lambda r: r["process_peak_rss_mib"])
    slow_app = max(app_rows, key=lambda r: r["run_seconds"])
    big_app = max(app_rows, key=lambda r: r["python_peak_mib"])
    summary = {
        "cases": len(rows), "cli_cases": len(cli_rows), "dashboard_cases": len(app_rows),
        "exit_codes_as_expected": all(r["exit_code"] == r["expected_exit_code"] for r in cli_rows),
        "slowest_cli_inprocess": [slow_cli["name"], slow_cli["inprocess_seconds"]],
        "slowest_cli_process_wall": [slow_proc["name"], slow_proc["process_seconds"]],
        "slowest_cli_process_cpu": [slow_cpu["name"], slow_cpu["process_cpu_seconds"]],
        "largest_cli_rss_mib": [big["name"], big["process_peak_rss_mib"]],
        "slowest_dashboard_run": [slow_app["name"], slow_app["run_seconds"]],
        "largest_dashboard_python_mib": [big_app["name"], big_app["python_peak_mib"]],
        # judged on CPU time and memplan's own time: wall time on a shared machine measures its load
        "within_bounds": (slow_cpu["process_cpu_seconds"] <= LIMIT_SECONDS and big["process_peak_rss_mib"] <= LIMIT_MIB
                          and slow_cli["inprocess_seconds"] <= LIMIT_SECONDS
                          and slow_app["run_seconds"] <= LIMIT_SECONDS
                          and big_app["python_peak_mib"] <= LIMIT_MIB),
        "over_bound": [r["name"] for r in cli_rows if r["process_cpu_seconds"] > LIMIT_SECONDS
                       or r["process_peak_rss_mib"] > LIMIT_MIB]
        + [r["name"] for r in app_rows if r["run_seconds"] > LIMIT_SECONDS or r["python_peak_mib"] > LIMIT_MIB],
        "limits": {"seconds": LIMIT_SECONDS, "mib": LIMIT_MIB},
        "machine": f"{platform.machine()} {platform.python_version()}, {os.cpu_count()} CPUs (shared)",
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    out = ROOT / "benchmarks" / "results" / "bad_input.json"
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    w = max(len(r["name"]) for r in rows)
    print(f"{'case':<{w}}  {'exit':>4}  {'process s':>9}  {'CPU s':>6}  {'RSS MiB':>7}  {'in-process s':>12}")
    for r in cli_rows:
        print(f"{r['name']:<{w}}  {r['exit_code']:>4}  {r['process_seconds']:>9.3f}  {r['process_cpu_seconds']:>6.3f}"
              f"  {r['process_peak_rss_mib']:>7.1f}  {r['inprocess_seconds']:>12.4f}")
    print(f"\n{'dashboard upload':<{w}}  {'bytes':>9}  {'run s':>7}  {'Python MiB':>10}")
    for r in app_rows:
        print(f"{r['name']:<{w}}  {r['bytes']:>9,}  {r['run_seconds']:>7.3f}  {r['python_peak_mib']:>10.1f}")
    print("\n" + json.dumps(summary, indent=1))
    print(f"Wrote {out.relative_to(ROOT)}")
    return 0 if summary["within_bounds"] and summary["exit_codes_as_expected"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
