"""`memplan validate --grid dist` plus the runs of issue 10's table; writes benchmarks/results/validate_dist.json.

    python benchmarks/validate_dist.py            # issue rows, then the grid
    python benchmarks/validate_dist.py --grid-only
    python benchmarks/validate_dist.py --rejudge   # today's estimates against the stored measurements
    python benchmarks/validate_dist.py --only fsdp2 # rerun the points whose layout starts so; keep the rest
"""
import json
import sys
import time
from pathlib import Path

from memplan.measure.dist_validate import dist_grid, issue_rows, run_configs, summarize_dist


def rejudge(out: Path) -> None:
    """Recompute every point's estimate and verdict from its stored per-rank measurement (nothing reruns)."""
    from memplan.measure.dist_validate import DistConfig, estimate_dist, judge
    report = json.loads(out.read_text())
    for name, part in report.items():
        points = []
        for p in part["points"]:
            if not p.get("ranks"):
                points.append(p)
                continue
            cfg = DistConfig(**p["config"])
            points.append(judge(cfg, estimate_dist(cfg), p["ranks"], p["seconds"]))
        part.update(points=points, summary=summarize_dist(points), passed=sum(p["passed"] for p in points))
        print(f"{name}: {part['passed']}/{part['total']} pass")
    out.write_text(json.dumps(report, indent=1))


def main():
    out = Path(__file__).parent / "results" / "validate_dist.json"
    if "--rejudge" in sys.argv:
        return rejudge(out)
    parts = [("grid", dist_grid())] if "--grid-only" in sys.argv else [("issue", issue_rows()), ("grid", dist_grid())]
    report = {}
    if out.exists():  # keep the sections not rerun
        try:
            report = json.loads(out.read_text())
        except ValueError:
            report = {}
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    for name, cfgs in parts:
        if only is not None:
            cfgs = [c for c in cfgs if c.layout.startswith(only)]
        t0 = time.perf_counter()

        def show(v):
            c, e = v["config"], v["error"]
            peak = f"{100 * e['peak']['relative']:+.2f}%" if e else "-"
            print(f"{name} {c['model']} {c['method']} {c['layout']}{' bucket_view' if c['bucket_view'] else ''} "
                  f"x{c['num_gpus']} {c['device']} {c['precision']}: {'PASS' if v['passed'] else 'FAIL'} peak {peak} "
                  f"{'; '.join(v['failures'])} ({v['seconds']:.0f} s)", flush=True)
        results = run_configs(cfgs, on_result=show)
        if only is not None and name in report:  # replace the rerun points, keep the others' measurements
            fresh = {json.dumps(r["config"], sort_keys=True): r for r in results}
            points = [fresh.pop(json.dumps(p["config"], sort_keys=True), p) for p in report[name]["points"]]
            points += list(fresh.values())
            report[name].update(points=points, summary=summarize_dist(points), passed=sum(p["passed"] for p in points),
                                total=len(points), rerun={"layouts": only + "*", "points": len(results),
                                                          "wall_seconds": round(time.perf_counter() - t0, 1)})
            out.write_text(json.dumps(report, indent=1))
            print(f"{name}: {len(results)} rerun; {report[name]['passed']}/{report[name]['total']} pass", flush=True)
            continue
        report[name] = {"wall_seconds": round(time.perf_counter() - t0, 1), "points": results,
                        "summary": summarize_dist(results), "passed": sum(r["passed"] for r in results),
                        "total": len(results)}
        out.write_text(json.dumps(report, indent=1))
        print(f"{name}: {report[name]['passed']}/{report[name]['total']} pass, {report[name]['wall_seconds']:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
