"""Multi-GPU layouts on the command line: `estimate --layout`, `validate --layout / --grid dist`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from memplan.cli import options
from memplan.cli.common import CLIError, apply_options


def layout_options(f):
    """--layout, --num-gpus, --bucket-view (estimate and validate)."""
    return apply_options(f, options.LAYOUT)


# --------------------------------------------------------------------------- validate
def _mib(n) -> str:
    return f"{n / 2**20:,.1f}"


def point_table(v: dict) -> str:
    from tabulate import tabulate

    from memplan.cli.validate import point_table as single_table
    out = [single_table(v)]
    rows = [[r["rank"], _mib(r["peak_bytes"]), r["peak_phase"],
             _mib(r["persistent"]["parameters"]), _mib(r["persistent"]["gradients"]),
             _mib(r["persistent"]["optimizer_states"]), _mib(r["persistent"]["projectors"])]
            + [_mib(r["phases"][p]["total"]) for p in ("forward", "backward", "optimizer_step", "refresh_step")]
            for r in v["ranks"]]
    out.append(tabulate(rows, headers=["rank", "peak MiB", "peak phase", "params", "grads", "states", "proj",
                                       "forward", "backward", "step", "refresh"], disable_numparse=True))
    return "\n\n".join(out)


def validate_point(model, method, rank, batch_size, seq_len, precision, checkpointing, device, layout, num_gpus,
                   bucket_view, as_json):
    from memplan.errors import MemplanError
    from memplan.measure.dist_validate import validate_dist
    from memplan.measure.distributed import DistConfig
    from memplan.methods import get_method
    from memplan.parallel import resolve_layout
    try:
        lay = resolve_layout(layout or "ddp")
        if lay == "single":
            raise CLIError("validate --layout single is the plain 'memplan validate' (drop --layout).")
        cfg = DistConfig(model=model, method=get_method(method).name, rank=rank, precision=precision,
                         batch_size=batch_size, seq_len=seq_len, layout=lay, num_gpus=num_gpus or 2,
                         device=device, bucket_view=bucket_view, checkpointing=checkpointing)
        v = validate_dist(cfg)
    except (MemplanError, ValueError) as e:
        raise CLIError(str(e).splitlines()[0]) from None
    if v["error"] is None:
        raise CLIError(f"the distributed run failed: {v['failures'][0].splitlines()[0]}")
    if as_json:
        click.echo(json.dumps(v, indent=2))
    else:
        e = v["estimate"]
        click.echo(f"\n{cfg.model} {cfg.method} | {e['engine']} on {cfg.num_gpus} ranks ({cfg.device}"
                   f"{', gloo processes' if cfg.device == 'cpu' else ', fake process group'}) | {cfg.precision} | "
                   f"batch {cfg.batch_size} x {cfg.seq_len} per rank | estimate: worst rank {e['worst_rank']}, "
                   f"measured: rank {v['measured']['rank']}\n")
        click.echo(point_table(v))
    if not v["passed"]:
        raise SystemExit(1)


def run_grid(out, as_json):
    from tqdm import tqdm

    from memplan.measure.dist_validate import dist_grid, run_configs, summarize_dist
    configs = dist_grid()
    t0 = time.perf_counter()
    with tqdm(total=len(configs), desc="grid dist", disable=as_json) as bar:
        def show(r):
            c = r["config"]
            bar.update(1)
            bar.set_postfix_str(f"{c['model']} {c['layout']} x{c['num_gpus']} {'PASS' if r['passed'] else 'FAIL'}")
        results = run_configs(configs, on_result=show)
    wall = time.perf_counter() - t0
    summary = summarize_dist(results)
    report = {"grid": {"wall_seconds": round(wall, 1), "points": results, "summary": summary,
                       "passed": sum(r["passed"] for r in results), "total": len(results)}}
    path = Path(out or "benchmarks/results/validate_dist.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # keep other sections (the rows) of an existing report
        try:
            report = {**json.loads(path.read_text()), **report}
        except ValueError:
            pass
    path.write_text(json.dumps(report, indent=1))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(summary_table(summary))
        g = report["grid"]
        click.echo(f"\n{g['passed']}/{g['total']} points pass. Wall time {wall:.0f} s. Report: {path}")
        for r in results:
            if not r["passed"]:
                c = r["config"]
                click.echo(f"FAIL {c['model']} {c['method']} {c['layout']} x{c['num_gpus']} {c['device']}: "
                           f"{'; '.join(f.splitlines()[0] for f in r['failures'])}")
    if report["grid"]["passed"] != report["grid"]["total"]:
        raise SystemExit(1)


def summary_table(rows) -> str:
    from tabulate import tabulate
    table = [[r["layout"], r["world"], r["device"], f"{r['passed']}/{r['points']}",
              "-" if r["exact_worst_bytes"] is None else f"{r['exact_worst_bytes']:,}",
              "-" if r["peak_worst"] is None else f"{100 * r['peak_worst']:.2f}%",
              "-" if r["peak_median"] is None else f"{100 * r['peak_median']:.2f}%",
              ", ".join(r["models"]), ", ".join(r["methods"])] for r in rows]
    return tabulate(table, headers=["layout", "world", "device", "passed", "exact cats worst B", "peak worst",
                                    "peak median", "models", "methods"], disable_numparse=True)
