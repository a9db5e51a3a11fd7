"""Server time of the dashboard's pages, cold and warm, beside a bare Streamlit page.

Each page runs in a fresh Python process that has imported Streamlit and its AppTest
(what a started server has loaded) and nothing of memplan, pandas or plotly: the first
run of the page is what the first visitor waits for on a just-started server (cold);
the run after it, with the same inputs, is what a visitor waits for later (warm; the
library's results are in Streamlit's cache by then). The bare page (a title and a line
of text) is the floor: the script-run machinery of Streamlit itself. Each page is also
timed as it runs on a server started by `memplan app` (memplan.app.serve: the pages'
libraries are loaded while the server starts, before any visitor): "(memplan app)".
Times are the median over --runs processes; the target is a first run under 0.3 s for
every page. Wall times on a loaded machine stretch; the CPU seconds (all threads of the
process) are given beside them.

memplan's modules are compiled to bytecode first (`compileall` on memplan/, app/, cli/, into
their __pycache__ folders, which git ignores), as `pip install` compiles an installed package
and as Streamlit's, plotly's and pyarrow's are: where PYTHONDONTWRITEBYTECODE is set (this
development machine sets it) no process ever writes them, and every first run would compile
memplan from source (about 0.03 s). --no-compile measures that case.

    python benchmarks/dashboard_speed.py [--runs 5] [--no-compile]

Prints a table and writes benchmarks/results/dashboard_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "dashboard_speed.json"
DASHBOARD = ROOT / "app" / "dashboard.py"
# page file -> its url_path in app/dashboard.py (st.Page)
PAGES = {"pages_estimate.py": "estimate", "pages_compare.py": "compare", "pages_sweep.py": "sweep",
         "pages_hardware.py": "hardware", "pages_validation.py": "validation"}
TARGET_S = 0.3
BARE = 'import streamlit as st\n\nst.title("bare page")\nst.write("hello")\n'

CHILD = r"""
import json, sys, time
from streamlit.testing.v1 import AppTest
script, page, url_path, warm_start = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if warm_start:  # what `memplan app`'s server does at start (memplan.app.serve), before any visitor
    from memplan.app.serve import preload
    preload()
app = AppTest.from_file(script, default_timeout=120)
if page != "-":
    # AppTest.switch_page before the first run hashes the file name, which st.navigation does not
    # know (an st.Page is hashed by its url_path): the default page would run instead. A visitor's
    # browser asks for the url_path, and so does this.
    from streamlit.util import calc_hash
    app._page_hash = calc_hash(url_path)
c0 = time.process_time(); t0 = time.perf_counter(); app.run()
cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
assert not app.exception, [e.value for e in app.exception]
shown = [m.value for m in app.markdown]
if page != "-":
    app.switch_page(page)  # after a run, AppTest finds the page by its file: the same page must run again
t0 = time.perf_counter(); app.run(); warm = time.perf_counter() - t0
assert [m.value for m in app.markdown] == shown, f"the first run did not show {page}"
mods = sorted(m for m in ("pandas", "plotly", "plotly.graph_objects", "pyarrow", "memplan.estimator")
              if m in sys.modules)
print(json.dumps({"cold_s": cold, "cold_cpu_s": cold_cpu, "warm_s": warm, "modules": mods,
                  "elements": len(app.main.children) if hasattr(app.main, "children") else None}))
"""


def run_child(script: Path, page: str, warm_start: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(script), page, PAGES.get(page, "-"), "1" if warm_start else "0"]
    r = subprocess.run([sys.executable, "-c", CHILD, *args],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{script} {page} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per page")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-compile", action="store_true", help="leave memplan's modules uncompiled (see above)")
    args = ap.parse_args()
    if not args.no_compile:
        import compileall

        for folder in ("memplan", "app", "cli"):
            if not compileall.compile_dir(ROOT / folder, quiet=1):
                raise SystemExit(f"compileall failed on {folder}/")
        compileall.compile_file(ROOT / "memplan_start.py", quiet=1)
    with tempfile.TemporaryDirectory() as d:
        bare = Path(d) / "bare.py"
        bare.write_text(BARE)
        targets = [("bare page", bare, "-", False)] + [(p, DASHBOARD, p, False) for p in PAGES] \
            + [(f"{p} (memplan app)", DASHBOARD, p, True) for p in PAGES]
        samples: dict[str, list[dict]] = {name: [] for name, *_ in targets}
        for _ in range(args.runs):  # interleaved: load on a shared machine hits every page alike
            for name, script, page, warm_start in targets:
                samples[name].append(run_child(script, page, warm_start))
    rows = {}
    for name, s in samples.items():
        cold = [x["cold_s"] for x in s]
        warm = [x["warm_s"] for x in s]
        rows[name] = {"cold_median_s": statistics.median(cold), "cold_min_s": min(cold), "cold_max_s": max(cold),
                      "cold_cpu_median_s": statistics.median(x["cold_cpu_s"] for x in s),
                      "warm_median_s": statistics.median(warm), "modules_after_first_run": s[0]["modules"]}
    bare_cold = rows["bare page"]["cold_median_s"]
    for name, r in rows.items():
        r["cold_over_bare_s"] = r["cold_median_s"] - bare_cold
    cold_ok = all(rows[p]["cold_median_s"] < TARGET_S for p in PAGES)
    served_ok = all(rows[f"{p} (memplan app)"]["cold_median_s"] < TARGET_S for p in PAGES)
    result = {"runs": args.runs, "target_cold_s": TARGET_S, "pages": rows,
              "pass_fresh_process": cold_ok, "pass_memplan_app_server": served_ok,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0],
                          # set: no .pyc is written, so every process compiles memplan from source
                          # (pip compiles an installed package's bytecode; Streamlit's is compiled)
                          "PYTHONDONTWRITEBYTECODE": bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))},
              "memplan_bytecode": "from source (--no-compile)" if args.no_compile else "compiled first (compileall)"}
    print(f"{'page':<36}{'cold median s':>14}{'min':>8}{'max':>8}{'cpu s':>8}{'warm s':>9}   imported by the first run")
    for name, r in rows.items():
        print(f"{name:<36}{r['cold_median_s']:>14.3f}{r['cold_min_s']:>8.3f}{r['cold_max_s']:>8.3f}"
              f"{r['cold_cpu_median_s']:>8.3f}"
              f"{r['warm_median_s']:>9.3f}   {', '.join(r['modules_after_first_run'])}")
    print(f"every page's first run under {TARGET_S} s: in a fresh process", "yes" if cold_ok else "NO",
          "| on a started `memplan app` server", "yes" if served_ok else "NO")
    print(f"memplan's bytecode: {result['memplan_bytecode']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
