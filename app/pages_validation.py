"""Validation page: estimated against measured per category (a `memplan validate` report),
and a CUDA memory snapshot broken down by category."""
from __future__ import annotations

import html

import streamlit as st

import memplan
from memplan import MemplanError
from memplan.app import charts, report, state
from memplan.app.table import arrow_table, csv_text
from memplan.units import GiB


def long_table(points: list[report.Point]) -> list[dict]:
    """One row per point and category (and the peak), bytes, with the relative error."""
    rows = []
    for p in points:
        for c in p.categories:
            rows.append({"point": p.label, "category": c, "estimated_bytes": p.estimated[c],
                         "measured_bytes": p.measured[c], "relative_error": p.errors[c]})
        rows.append({"point": p.label, "category": "peak", "estimated_bytes": p.estimated_peak,
                     "measured_bytes": p.measured_peak, "relative_error": p.peak_error})
    return rows


def summary_table(points: list[report.Point]) -> list[dict]:
    rows = []
    for p in points:
        row = {"point": p.label, "estimated peak (GiB)": p.estimated_peak / GiB,
               "measured peak (GiB)": p.measured_peak / GiB, "peak error (%)": 100 * p.peak_error}
        row.update({f"{charts.CATEGORY_LABELS[c]} error (%)": 100 * p.errors[c] for c in p.categories})
        if p.passed is not None:
            row["passed"] = "yes" if p.passed else "no"
        rows.append(row)
    return rows


def _load() -> tuple[report.Report | None, str]:
    up = st.file_uploader("Validation report (JSON from `memplan validate --grid ...`)", type=["json"],
                          key="val_report", help="Read as JSON only.")
    try:
        if up is not None:
            return report.parse_report(up.getvalue(), f"uploaded file '{up.name}'"), up.name
        return report.read_default()
    except MemplanError as e:
        st.error(state.web_text(e))
        return None, ""


def _filter(points: list[report.Point]) -> list[report.Point]:
    """Model and method filters, shown when the report has more than one of either."""
    models = sorted({p.model for p in points})
    methods = list(dict.fromkeys(p.method for p in points))
    cols = iter(st.columns(2))
    if len(models) > 1:
        models = next(cols).multiselect("Models", models, default=models, key="val_models")
    if len(methods) > 1:
        methods = next(cols).multiselect("Methods", methods, default=methods, key="val_methods")
    return [p for p in points if p.model in models and p.method in methods]


def report_section() -> None:
    st.markdown("### Estimated against measured")
    rep, source = _load()
    if rep is None:
        if source:
            st.info(source)
        return
    st.caption(f"{len(rep.points) + len(rep.broken)} points from {state.md(source)}. Error = (estimated − measured) / "
               "measured; the peak is the allocated bytes at the peak phase (the CUDA context is not compared).")
    if rep.broken:
        with st.expander(f"{len(rep.broken)} point(s) could not be measured"):
            st.markdown("\n".join(f"- **{state.md(b.label)}**: {state.md(b.reason)}" for b in rep.broken))
    points = _filter(rep.points)
    if not points:
        st.info("No measured point matches these filters.")
        return
    errs = [100 * p.peak_error for p in points]
    worst = max(range(len(points)), key=lambda i: abs(errs[i]))
    c = st.columns(4)
    c[0].metric("Points", len(points))
    verdicts = [p.passed for p in points if p.passed is not None]
    c[1].metric("Passed", f"{sum(verdicts)} of {len(verdicts)}" if verdicts else "n/a",
                help="The report's verdict: exact categories to the byte, the peak within 3%, the peak phase.")
    c[2].metric("Mean |peak error|", f"{sum(abs(e) for e in errs) / len(errs):.2f}%")
    c[3].metric("Worst |peak error|", f"{abs(errs[worst]):.2f}%", help=state.md(points[worst].label))
    # plotly renders HTML tags (links too) in labels and titles: the report's text is escaped for it
    st.plotly_chart(charts.error_strip([html.escape(p.method) for p in points], [html.escape(p.label) for p in points],
                                       errs,
                                       "Error of the peak, each point by method"), width="stretch")
    label = st.selectbox("Point", [p.label for p in points], index=worst, key="val_point",
                         help="The worst point first.")
    p = next(q for q in points if q.label == label)
    st.plotly_chart(charts.validation_bars({c: p.estimated[c] for c in p.categories},
                                           {c: p.measured[c] for c in p.categories},
                                           f"{html.escape(p.label)}: estimated against measured, per category"),
                    width="stretch")
    if p.failures:
        st.warning("Failed: " + state.md("; ".join(p.failures)))
    df = arrow_table(summary_table(points))
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in df.column_names if "(" in c})
    st.download_button("Download the comparison (CSV, bytes)", csv_text(long_table(points)),
                       "memplan_validation.csv", "text/csv", icon=":material/download:", key="dl_validation")


def _estimate_for_snapshot():
    """The sidebar's run, estimated, to set the snapshot beside it (None without a valid model)."""
    run = st.session_state.get("_inputs")
    if run is None or run.model is None:
        return None, ""
    try:
        return memplan.estimate(run.model, run.method, **run.options()), f"{run.model.name} · {run.method}"
    except MemplanError:
        return None, ""


def snapshot_section() -> None:
    from memplan.app import snapshot_view

    snapshot_view.section(_estimate_for_snapshot)  # estimated once a snapshot is uploaded, to set beside it


def render() -> None:
    from memplan.app import validation_dist

    st.markdown("## Validation")
    report_section()
    st.divider()
    validation_dist.section()
    st.divider()
    snapshot_section()


if __name__ == "__main__":
    render()
