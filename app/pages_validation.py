"""Validation page: estimated against measured per category (a `memplan validate` report),
and a CUDA memory snapshot broken down by category."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from memplan import CATEGORIES, MemplanError
from memplan.app import charts, report
from memplan.units import GiB


def long_table(points: list[report.Point]) -> pd.DataFrame:
    """One row per point and category (and the peak), bytes, with the relative error."""
    rows = []
    for p in points:
        for c in p.categories:
            rows.append({"point": p.label, "category": c, "estimated_bytes": p.estimated[c],
                         "measured_bytes": p.measured[c], "relative_error": p.errors[c]})
        rows.append({"point": p.label, "category": "peak", "estimated_bytes": p.estimated_peak,
                     "measured_bytes": p.measured_peak, "relative_error": p.peak_error})
    return pd.DataFrame(rows)


def summary_table(points: list[report.Point]) -> pd.DataFrame:
    rows = []
    for p in points:
        row = {"point": p.label, "estimated peak (GiB)": p.estimated_peak / GiB,
               "measured peak (GiB)": p.measured_peak / GiB, "peak error (%)": 100 * p.peak_error}
        row.update({f"{charts.CATEGORY_LABELS[c]} error (%)": 100 * p.errors[c] for c in p.categories})
        if p.passed is not None:
            row["passed"] = "yes" if p.passed else "no"
        rows.append(row)
    return pd.DataFrame(rows)


def _load_points() -> tuple[list[report.Point] | None, str]:
    up = st.file_uploader("Validation report (JSON from `memplan validate --grid ...`)", type=["json"],
                          key="val_report", help="Read as JSON only.")
    try:
        if up is not None:
            return report.parse_report(up.getvalue(), f"uploaded file '{up.name}'"), up.name
        return report.read_default()
    except MemplanError as e:
        st.error(str(e))
        return None, ""


def report_section() -> None:
    st.markdown("### Estimated against measured")
    points, source = _load_points()
    if points is None:
        if source:
            st.info(source)
        return
    st.caption(f"{len(points)} points from {source}. Error = (estimated − measured) / measured; the peak is "
               "the allocated bytes at the peak phase (the CUDA context is not part of the comparison).")
    errs = [100 * p.peak_error for p in points]
    worst = max(range(len(points)), key=lambda i: abs(errs[i]))
    c = st.columns(4)
    c[0].metric("Points", len(points))
    verdicts = [p.passed for p in points if p.passed is not None]
    c[1].metric("Passed", f"{sum(verdicts)} of {len(verdicts)}" if verdicts else "n/a")
    c[2].metric("Mean |peak error|", f"{sum(abs(e) for e in errs) / len(errs):.2f}%")
    c[3].metric("Worst |peak error|", f"{abs(errs[worst]):.2f}%", help=points[worst].label)
    label = st.selectbox("Point", [p.label for p in points], key="val_point")
    p = next(q for q in points if q.label == label)
    st.plotly_chart(charts.validation_bars({c: p.estimated[c] for c in p.categories},
                                           {c: p.measured[c] for c in p.categories},
                                           f"{p.label}: estimated against measured, per category"),
                    width="stretch")
    st.plotly_chart(charts.error_bars([q.label for q in points], errs, "Error of the peak, per point"),
                    width="stretch")
    df = summary_table(points)
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in df.columns if "(" in c})
    st.download_button("Download the comparison (CSV, bytes)", long_table(points).to_csv(index=False),
                       "memplan_validation.csv", "text/csv", icon=":material/download:", key="dl_validation")


def snapshot_section() -> None:
    st.markdown("### CUDA memory snapshot")
    st.caption("A snapshot from `torch.cuda.memory._dump_snapshot(...)`, broken down by category. It is read "
               "with a restricted unpickler: no code in the file is executed.")
    load, why = report.snapshot_loader()
    if load is None:
        st.info(why)
        return
    up = st.file_uploader("CUDA memory snapshot (.pickle)", type=["pickle", "pkl"], key="val_snapshot")
    if up is None:
        return
    try:
        breakdown = load(up.getvalue())
        breakdown = {c: int(breakdown.get(c, 0)) for c in CATEGORIES}
    except Exception as e:  # an untrusted upload: any failure is a message, never a traceback
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        st.error(f"Could not read '{up.name}' as a CUDA memory snapshot: {why}.")
        return
    st.plotly_chart(charts.category_bar(breakdown, f"{up.name}: {sum(breakdown.values()) / GiB:.2f} GiB"),
                    width="stretch")
    st.download_button("Download the breakdown (CSV, bytes)",
                       pd.DataFrame([{"category": c, "bytes": b} for c, b in breakdown.items()]).to_csv(index=False),
                       "memplan_snapshot.csv", "text/csv", icon=":material/download:", key="dl_snapshot")


def render() -> None:
    st.markdown("## Validation")
    report_section()
    st.divider()
    snapshot_section()


if __name__ == "__main__":
    render()
