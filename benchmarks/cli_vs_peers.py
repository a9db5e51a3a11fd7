"""memplan's `estimate` CLI beside its peers: whole-process wall time, interleaved.

One training estimate of LLaMA-7B (AdamW, batch 1 x 2048, JSON out) from each tool,
each run as a fresh process (start-up, imports, the estimate and the printing):

- memplan:      memplan estimate --model llama-7b --method adamw --json
- vramcalc:     vramcalc estimate <llama-7b>/config.json --train --json
- llm-analysis: python -m llm_analysis.analysis train --model_name decapoda-research_llama-7b-hf ...
                (its own LLaMA-7B profile: it reads only its own JSON format, not a HF
                config.json; ZeRO-3 over 8 A100-80GB: on one GPU it refuses, as 7B with
                Adam does not fit)

memplan is timed as a user runs it: installed with `pip install .` (not editable) into
a fresh venv (`--dev` adds a row for this development venv's editable install, whose
import hook every Python start in it pays). Two reference rows show the floor: the
interpreter alone, and the interpreter importing click (memplan's CLI library).
vramcalc gets a Hugging Face config.json (memplan's llama-7b profile without its
`_memplan` block). Rounds are interleaved (every tool once per round, the order
rotating) so that load on a shared machine hits all tools alike. Each command gets
one untimed warm-up run (file cache, .pyc files). A peer that is not installed is
skipped with a note. Peers are looked up on PATH, next to this Python, and in
`.venv-peers/` at the repository root (install them there, not into memplan's venv:
llm-analysis pins an old transformers):

    python3 -m venv .venv-peers && .venv-peers/bin/pip install vramcalc llm-analysis
    python benchmarks/cli_vs_peers.py [--runs 20]

Prints a table and writes benchmarks/results/cli_vs_peers.json.
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "cli_vs_peers.json"
LLM_ANALYSIS_MODEL = "decapoda-research_llama-7b-hf"  # llm-analysis's bundled LLaMA-7B
PEER_DIRS = [Path(sys.executable).parent, ROOT / ".venv-peers" / "bin"]


def find_exe(name: str) -> str | None:
    for d in PEER_DIRS:
        if (d / name).is_file():
            return str(d / name)
    return shutil.which(name)


def find_python_with(module: str) -> str | None:
    """A Python interpreter that can import `module` (this one, or a peers' venv)."""
    for d in PEER_DIRS:
        py = d / "python"
        if py.is_file() and subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0:
            return str(py)
    return None


def version_of(python: str, dist: str) -> str:
    r = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version('{dist}'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def write_config(tmp: Path) -> Path:
    cfg = json.loads((ROOT / "profiles" / "models" / "llama-7b.json").read_text())
    cfg.pop("_memplan", None)
    path = tmp / "llama-7b" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(cfg, indent=2))
    return path


def user_install(venv_dir: Path) -> str:
    """memplan installed as a user installs it (`pip install .`: not editable), offline.

    A fresh venv; memplan's wheel built from this tree by this environment's setuptools, and its two
    dependencies (click, tabulate) copied from this environment, same versions. An
    editable install adds its import hook to every Python start in its venv, so the
    development venv is timed as a second row, not as memplan.
    """
    import importlib.metadata as md
    import venv

    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    venv.create(venv_dir, with_pip=True)
    py = venv_dir / "bin" / "python"
    wheels = venv_dir / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, cwd=venv_dir)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels.glob("*.whl"))],
                   check=True, capture_output=True, cwd=venv_dir)
    dest = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for dist in ("click", "tabulate"):
        d = md.distribution(dist)
        for f in d.files or []:
            src = Path(d.locate_file(f))
            if src.is_file() and ".." not in f.parts:
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / f)
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' build folder from the install
    return str(venv_dir / "bin" / "memplan")


def tools(config: Path, tmp: Path, dev_row: bool) -> tuple[dict[str, dict], list[str]]:
    """{name: {cmd, version}} of the tools found, and notes on the ones skipped."""
    found, notes = {}, []
    args = ["estimate", "--model", "llama-7b", "--method", "adamw", "--json"]
    found["memplan"] = {"cmd": [user_install(tmp / "memplan-venv"), *args],
                        "version": version_of(sys.executable, "memplan") + " (pip install .)"}
    py = str(Path(found["memplan"]["cmd"][0]).with_name("python"))
    # reference rows, not tools: the interpreter alone, and the interpreter importing click
    found["python"] = {"cmd": [py, "-c", "pass"], "version": platform.python_version(), "reference": True}
    found["python+click"] = {"cmd": [py, "-c", "import click"], "version": version_of(sys.executable, "click"),
                             "reference": True}
    dev = find_exe("memplan")
    if dev_row and dev is not None:
        found["memplan-dev"] = {"cmd": [dev, *args], "version": "editable"}
    vramcalc = find_exe("vramcalc")
    if vramcalc is None:
        notes.append("vramcalc: not installed, skipped (pip install vramcalc)")
    else:
        py = Path(vramcalc).with_name("python")
        found["vramcalc"] = {"cmd": [vramcalc, "estimate", str(config), "--train", "--json"],
                             "version": version_of(str(py) if py.is_file() else sys.executable, "vramcalc")}
    llm_py = find_python_with("llm_analysis")
    if llm_py is None:
        notes.append("llm-analysis: not installed, skipped (pip install llm-analysis)")
    else:
        found["llm-analysis"] = {
            "cmd": [llm_py, "-m", "llm_analysis.analysis", "train", "--model_name", LLM_ANALYSIS_MODEL,
                    "--gpu_name", "a100-sxm-80gb", "--batch_size_per_gpu", "1", "--seq_len", "2048",
                    "--total_num_gpus", "8", "--ds_zero", "3", "--log_level", "ERROR"],
            "version": version_of(llm_py, "llm-analysis")}
    return found, notes


def run_once(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one process: CPU is user + system, which the load stretches less."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, cwd=cwd)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr.decode()[-2000:]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per tool")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--dev", action="store_true", help="also time this (editable) development install")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        found, notes = tools(write_config(tmp), tmp, args.dev)
        names = list(found)
        for name in names:  # warm-up: file cache, .pyc files
            run_once(found[name]["cmd"], tmp)
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        for i in range(args.runs):
            order = names[i % len(names):] + names[: i % len(names)]
            for name in order:
                wall, used = run_once(found[name]["cmd"], tmp)
                times[name].append(wall)
                cpu[name].append(used)
    med = {n: statistics.median(t) for n, t in times.items()}
    result = {"runs": args.runs, "notes": notes, "tools": {}, "ratios": {},
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]}}
    for n in names:
        cmd = [Path(found[n]["cmd"][0]).name, *found[n]["cmd"][1:]]
        result["tools"][n] = {"version": found[n]["version"], "command": " ".join(cmd),
                              "reference": bool(found[n].get("reference")),
                              "median_s": med[n], "min_s": min(times[n]), "max_s": max(times[n]),
                              "cpu_median_s": statistics.median(cpu[n]), "times_s": times[n], "cpu_s": cpu[n]}
    print(f"{'tool':<14}{'version':>24}{'median ms':>12}{'min ms':>10}{'max ms':>10}{'cpu ms':>9}"
          f"{'memplan/peer':>14}{'(cpu)':>7}")
    for n in names:
        t = result["tools"][n]
        ratio = cpu_ratio = ""
        if n != "memplan" and not found[n].get("reference"):
            paired = statistics.median(a / b for a, b in zip(times["memplan"], times[n]))
            result["ratios"][f"memplan/{n}"] = {
                "of_medians": med["memplan"] / med[n], "paired_median": paired,
                "of_cpu_medians": statistics.median(cpu["memplan"]) / statistics.median(cpu[n])}
            ratio = f"{med['memplan'] / med[n]:.2f}x"
            cpu_ratio = f"{result['ratios'][f'memplan/{n}']['of_cpu_medians']:.2f}x"
        print(f"{n:<14}{t['version']:>24}{1000 * t['median_s']:>12.1f}{1000 * t['min_s']:>10.1f}"
              f"{1000 * t['max_s']:>10.1f}{1000 * t['cpu_median_s']:>9.1f}{ratio:>14}{cpu_ratio:>7}")
    for note in notes:
        print("note:", note)
    if "vramcalc" in med:
        result["memplan_at_or_below_vramcalc"] = med["memplan"] <= med["vramcalc"]
        print("memplan at or below vramcalc:", "yes" if result["memplan_at_or_below_vramcalc"] else "NO")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
