"""Compare page: every method for the same model and run, side by side, saving against AdamW."""
from __future__ import annotations

import streamlit as st

from memplan import CATEGORIES, METHODS
from memplan.app import charts, data, state
from memplan.app.table import arrow_table, csv_text
from memplan.estimator import capacity_bytes
from memplan.units import GiB


def table(rows: list[dict]) -> list[dict]:
    """One row per method, in GiB for reading (bytes in the CSV)."""
    out = []
    for r in rows:
        # "peak" is the allocated peak, the same quantity the saving against AdamW subtracts
        row = {"method": r["method"], "fits": "yes" if r["fits"] else "no",
               "peak (GiB)": r["peak_bytes"] / GiB, "device total (GiB)": r["device_total_bytes"] / GiB,
               "saving vs AdamW (GiB)": r["saved_vs_adamw_bytes"] / GiB,
               "saving vs AdamW (%)": r["saved_vs_adamw_pct"],
               "headroom (GiB)": r["headroom_bytes"] / GiB,
               "peak phase": charts.PHASE_LABELS[r["peak_phase"]]}
        row.update({f"{charts.CATEGORY_LABELS[c].split(' (')[0]} (GiB)": r["breakdown"].get(c, 0) / GiB
                    for c in CATEGORIES})
        out.append(row)
    return out


def csv_table(rows: list[dict]) -> list[dict]:
    return [{"method": r["method"], "fits": r["fits"], "peak_allocated_bytes": r["peak_bytes"],
             "device_total_bytes": r["device_total_bytes"],
             "peak_phase": r["peak_phase"], "headroom_bytes": r["headroom_bytes"],
             "saved_vs_adamw_bytes": r["saved_vs_adamw_bytes"],
             **{f"{c}_bytes": r["breakdown"].get(c, 0) for c in CATEGORIES}} for r in rows]


def render() -> None:
    run = state.inputs()
    g = run.gpu_profile
    st.markdown(f"## Methods side by side · {run.model.name}")
    st.caption(f"Same run for every method: {run.precision}, batch {run.batch_size} × {run.seq_len} tokens, "
               f"rank {run.rank} (projection and adapter methods)"
               + (", per-layer update" if run.layerwise else "") + (", checkpointing" if run.checkpointing else "")
               + ". Change them in the sidebar.")
    methods = st.multiselect("Methods", list(METHODS), default=list(METHODS), key="cmp_methods",
                             help="The bars are sorted, smallest peak first.")
    if not methods:
        st.info("Pick at least one method.")
        return
    rows = state.shown(data.compare, run.model, tuple(methods), run.gpu, run.options())

    best, fitting = rows[0], [r for r in rows if r["fits"]]
    c = st.columns(3)
    c[0].metric(f"Smallest peak: {best['method']}", f"{best['peak_bytes'] / GiB:.2f} GiB",
                help=f"Allocated at the peak phase, as the saving is; the device total adds the CUDA context "
                     f"and fragmentation: {best['device_total_bytes'] / GiB:.2f} GiB.")
    c[1].metric("Largest saving vs AdamW", f"{best['saved_vs_adamw_bytes'] / GiB:.2f} GiB",
                delta=f"{-best['saved_vs_adamw_pct']:.1f}%", delta_color="inverse",
                help="AdamW's allocated peak minus this method's, for the same run.")
    c[2].metric(f"Fit on {g.name.replace('NVIDIA ', '')}", f"{len(fitting)} of {len(rows)}")

    short = g.name.replace("NVIDIA ", "").replace("GeForce ", "")
    st.plotly_chart(charts.method_bars(rows, capacity_bytes(g),
                                       f"{short} capacity", run.method), width="stretch")
    df = arrow_table(table(rows))
    st.dataframe(df, hide_index=True, width="stretch", height=35 * (df.num_rows + 1) + 3,
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in df.column_names
                                if "(GiB)" in c or "(%)" in c})
    st.download_button("Download the numbers (CSV, bytes)", csv_text(csv_table(rows)),
                       f"memplan_compare_{run.model.name}.csv", "text/csv", icon=":material/download:",
                       key="dl_compare")


if __name__ == "__main__":
    render()
