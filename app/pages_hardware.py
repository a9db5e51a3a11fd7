"""Hardware page: which GPUs and GPU counts fit the run, cheapest first (`memplan.plan`)."""
from __future__ import annotations

import streamlit as st

from memplan.app import charts, data, state
from memplan.app.table import arrow_table, csv_text
from memplan.units import GiB


def table(rows: list[dict]) -> list[dict]:
    return [{"GPUs": r["label"], "layout": r["layout_name"],
             "needed per GPU (GiB)": r["required_bytes"] / GiB,
             "capacity per GPU (GiB)": r["capacity_bytes"] / GiB,
             "headroom (GiB)": r["headroom_bytes"] / GiB,
             "max batch per GPU": r["max_batch_size"],
             "$ / hour": r["price_per_hour_usd"], "purchase ($)": r["price_purchase_usd"]}
            for r in rows]


def csv_table(rows: list[dict]) -> list[dict]:
    keys = ("gpu", "name", "count", "layout", "required_bytes", "capacity_bytes", "headroom_bytes",
            "max_batch_size", "price_per_hour_usd", "price_purchase_usd", "price_date")
    return [{k: r[k] for k in keys} for r in rows]


def render() -> None:
    run = state.inputs()
    st.markdown(f"## Hardware · {run.model.name} · {run.method}")
    st.caption(f"Every GPU profile and GPU count checked against the run in the sidebar (batch {run.batch_size} "
               "per GPU), with the least-sharded layout that fits, named by the PyTorch engine that runs it (DDP, DDP + ZeroRedundancyOptimizer, FSDP2; numbers of the worst rank). Cheapest per hour "
               "first; prices are approximate and dated (see `memplan gpus`).")
    counts = st.pills("GPU counts", data.GPU_COUNTS, selection_mode="multi", default=list(data.GPU_COUNTS),
                      key="hw_counts", help="GPUs per run; each runs its own micro-batch.")
    counts = tuple(sorted(counts or (1,)))
    if run.layerwise and max(counts) > 1:
        st.caption(":material/info: The per-layer update is modeled on one GPU only, so multi-GPU options "
                   "appear when it is off.")
    if run.offload != "none" and max(counts) > 1:
        st.caption(":material/info: CPU offload is modeled on one GPU only, so multi-GPU options appear when "
                   "the offload is off.")
    rows, never = state.shown(data.hardware, run.model, run.method, run.options(), counts)
    if not rows:
        st.error("No GPU and count here fits this run. Try the per-layer update, checkpointing, a smaller "
                 "batch, an 8-bit or projection method, or more GPUs.", icon=":material/cancel:")
        return
    best = rows[0]
    price = f" at about ${best['price_per_hour_usd']:.2f}/hour" if best["price_per_hour_usd"] is not None else ""
    st.success(f"Cheapest fit: {best['label']} ({best['layout_name']}){price}, "
               f"{best['headroom_bytes'] / GiB:.2f} GiB headroom per GPU. {len(rows)} options fit.",
               icon=":material/check_circle:")
    top = st.slider("Options shown", 1, len(rows), min(len(rows), 15), key="hw_top") if len(rows) > 1 else 1
    shown = rows[:top]
    st.plotly_chart(charts.hardware_bars(shown), width="stretch")
    df = arrow_table(table(shown))
    st.dataframe(df, hide_index=True, width="stretch", height=35 * (df.num_rows + 1) + 3,
                 column_config={**{c: st.column_config.NumberColumn(format="%.2f") for c in df.column_names
                                   if "(GiB)" in c},
                                "$ / hour": st.column_config.NumberColumn(format="$%.2f"),
                                "purchase ($)": st.column_config.NumberColumn(format="$%d")})
    if never:
        st.caption("Does not fit at any of these counts: " + ", ".join(never) + ".")
    st.download_button("Download the numbers (CSV, bytes)", csv_text(csv_table(rows)),
                       f"memplan_hardware_{run.model.name}_{run.method}.csv", "text/csv",
                       icon=":material/download:", key="dl_hardware")


if __name__ == "__main__":
    render()
