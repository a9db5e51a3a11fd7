"""Validation page, multi-GPU part: `memplan validate --grid dist` (benchmarks/results/validate_dist.json),
the worst rank's estimate against PyTorch's engine, beside the single-GPU grid."""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from memplan.app import report
from memplan.app.table import arrow_table
from memplan.units import MiB


def dist_path() -> Path:
    return Path(report.DEFAULT_REPORT).with_name("validate_dist.json")


def load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def points_frame(points: list[dict]) -> list[dict]:
    rows = []
    for p in points:
        c = p.get("config") or {}
        err = p.get("error") or {}
        est, mea = p.get("estimate") or {}, p.get("measured") or {}
        rows.append({"model": Path(str(c.get("model", "?"))).name, "method": c.get("method"),
                     "layout": str(c.get("layout")) + (" + bucket view" if c.get("bucket_view") else ""),
                     "engine": est.get("engine", ""), "ranks": c.get("num_gpus"), "device": c.get("device"),
                     "precision": c.get("precision"), "batch": f"{c.get('batch_size')} x {c.get('seq_len')}",
                     "estimated peak (MiB)": est["peak_bytes"] / MiB if est else None,
                     "measured peak (MiB)": mea["peak_bytes"] / MiB if mea else None,
                     "peak error (%)": 100 * err["peak"]["relative"] if err else None,
                     "passed": "yes" if p.get("passed") else "no",
                     "failures": "; ".join(str(f).splitlines()[0] for f in p.get("failures") or [])})
    return rows


def section() -> None:
    st.markdown("### Multi-GPU layouts against PyTorch's distributed engine")
    data = load(dist_path())
    if data is None:
        st.info(f"No multi-GPU report at {dist_path()}. Run `memplan validate --grid dist` "
                "(or `python benchmarks/validate_dist.py`).")
        return
    st.caption("DDP, DDP + ZeroRedundancyOptimizer and FSDP2 runs: real gloo processes on the CPU (world 2 and 4) "
               "and a fake process group under FakeTensorMode (world 8). The estimate is the worst rank's; it is "
               "compared with the measured rank of highest peak (persistent categories to the byte, peak within 2%).")
    for name, title in (("issue", "The runs of issue 10's table"), ("grid", "--grid dist")):
        part = data.get(name)
        if not isinstance(part, dict) or not part.get("points"):
            continue
        st.markdown(f"**{title}**: {part.get('passed')}/{part.get('total')} pass, "
                    f"wall time {part.get('wall_seconds', 0):.0f} s")
        df = arrow_table(points_frame(part["points"]))
        st.dataframe(df, hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.2f") for c in df.column_names
                                    if "(" in c})
