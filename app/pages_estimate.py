"""Estimate page: one run's memory by category and phase, and whether it fits the GPU."""
from __future__ import annotations

import streamlit as st

from memplan import CATEGORIES, PHASES
from memplan.app import charts, data, state
from memplan.app.table import arrow_table, csv_text
from memplan.units import GiB


def verdict_text(fit, gpu_name: str) -> str:
    """The fits / does-not-fit sentence, headroom or shortfall in GiB."""
    if fit.fits:
        return (f"Fits on {gpu_name}: needs {fit.required_bytes / GiB:.2f} GiB of "
                f"{fit.capacity_bytes / GiB:.2f} GiB, {fit.headroom_bytes / GiB:.2f} GiB headroom.")
    return (f"Does not fit on {gpu_name}: needs {fit.required_bytes / GiB:.2f} GiB of "
            f"{fit.capacity_bytes / GiB:.2f} GiB, {-fit.headroom_bytes / GiB:.2f} GiB short.")


def advice_markdown(advice: dict, shown: int = 4) -> str:
    """The advisor's answer under the verdict: the best single changes (or pairs), headroom and cost."""
    if advice["status"] == "fits":
        return ""
    options, head = advice["single"], "Single changes that make it fit"
    if advice["status"] == "tight":
        head = f"Fits tightly (under {advice['goal_headroom_bytes'] / GiB:.2f} GiB free). Changes that leave room"
    if not options or advice["pairs"]:
        options, head = options + advice["pairs"], head + (", or pairs of changes" if options else
                                                           ": no single change is enough; the best pairs")
    if not options:
        return "No single change or pair of changes is enough: see the Hardware page for larger GPUs."
    lines = [f"**{head}** (`memplan advise`):"]
    for o in options[:shown]:
        cost = "; ".join(f"{c['cost']} ({c['source']})" for c in o["changes"])
        lines.append(f"- `{o['label']}`: {o['headroom_bytes'] / GiB:+.2f} GiB headroom. {cost}")
    if len(options) > shown:
        lines.append(f"- … {len(options) - shown} more with `memplan advise`.")
    return "\n".join(lines)


def breakdown_table(est) -> list[dict]:
    """Categories (rows) by phase (columns) in GiB, the peak phase's device total last."""
    rows = []
    for cat in CATEGORIES:
        row = {"category": charts.CATEGORY_LABELS[cat].split(" (")[0]}
        for p in PHASES:
            row[f"{charts.PHASE_LABELS[p]} (GiB)"] = (est.overhead if cat == "overhead"
                                                      else est.phases[p].get(cat, 0)) / GiB
        row["share of peak (%)"] = 100 * est.breakdown[cat] / est.device_total_bytes
        rows.append(row)
    return rows


def csv_table(est) -> list[dict]:
    """Long form, in bytes: phase, category, bytes (overhead once, at the peak)."""
    rows = [{"phase": p, "category": c, "bytes": int(v)} for p in PHASES for c, v in est.phases[p].items()]
    rows.append({"phase": est.peak_phase, "category": "overhead", "bytes": int(est.overhead)})
    return rows


def options_table(rows: list[dict], run) -> list[dict]:
    """The fit of the same run with the per-layer update and checkpointing on and off."""
    yes = {True: "yes", False: "no"}
    out = []
    for r in rows:
        this = r["layerwise"] == run.layerwise and r["checkpointing"] == run.checkpointing
        out.append({"per-layer update": yes[r["layerwise"]], "checkpointing": yes[r["checkpointing"]],
                    "fits": yes[r["fits"]], "peak (GiB)": r["required_bytes"] / GiB,
                    "headroom (GiB)": r["headroom_bytes"] / GiB,
                    f"max batch (seq {run.seq_len})": r["max_batch_size"], "max sequence (batch 1)": r["max_seq_len"],
                    "max rank": r["max_rank"] if r["max_rank"] is not None else "–",
                    "": "◀ this run" if this else ""})
    return out


def render() -> None:
    run = state.inputs()
    est = state.shown(data.estimate, run.model, run.method, run.gpu, run.options())
    fit = est.fit()
    g = fit.gpu

    st.markdown(f"## {run.model.name} · {run.method}" + (f" · rank {run.rank}" if run.uses_rank else ""))
    st.caption(f"{est.impl.name} ({est.impl.library}) · {run.precision}, batch {run.batch_size} × {run.seq_len} tokens"
               + (", per-layer update" if run.layerwise else "") + (", checkpointing" if run.checkpointing else "")
               + f" · {est.parameter_count / 1e9:.2f} B parameters, {est.trainable_count / 1e9:.2f} B trainable")
    advice = advice_markdown(state.shown(data.advice, run.model, run.method, run.gpu, run.options()))
    (st.success if fit.fits else st.error)(verdict_text(fit, g.name) + (f"\n\n{advice}" if advice else ""),
                                           icon=":material/check_circle:" if fit.fits else ":material/cancel:")

    c = st.columns(4)
    c[0].metric("Peak memory (device total)", f"{est.device_total_bytes / GiB:.2f} GiB",
                help="Allocated peak + CUDA context + allocator fragmentation: what the GPU must have.")
    c[1].metric("Peak phase", charts.PHASE_LABELS[est.peak_phase],
                help=f"Allocated at the peak: {est.peak_bytes / GiB:.2f} GiB.")
    c[2].metric(f"{g.name.replace('NVIDIA ', '')} capacity", f"{fit.capacity_bytes / GiB:.2f} GiB",
                help="What CUDA can allocate on this GPU.")
    c[3].metric("Headroom" if fit.fits else "Shortfall", f"{abs(fit.headroom_bytes) / GiB:.2f} GiB",
                delta=f"{100 * fit.headroom_bytes / fit.capacity_bytes:+.0f}% of capacity", delta_color="normal",
                help="Capacity minus the device total; a shortfall is what is missing.")

    if est.host_bytes:
        st.info(f"Host memory (offload {run.offload}): {est.host_bytes / GiB:.2f} GiB, of which "
                f"{est.host_pinned_bytes / GiB:.2f} GiB pinned weight and gradient copies; the rest is optimizer "
                "state stepped on the CPU (torchao CPUOffloadOptimizer).", icon=":material/memory:")

    st.plotly_chart(charts.phase_bars(est.phases, est.overhead, est.peak_phase, fit.capacity_bytes,
                                      f"{g.name.replace('NVIDIA ', '')} capacity"), width="stretch")

    st.markdown(f"#### Per-layer update and checkpointing on {g.name.replace('NVIDIA ', '')}")
    rows = state.shown(data.fit_options, run.model, run.method, run.gpu, run.options())
    opts = arrow_table(options_table(rows, run))
    st.dataframe(opts, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in opts.column_names
                                if "GiB" in c})
    st.caption("The largest batch, sequence and rank that fit come from the planner's searches "
               "(`memplan fit`); 0: even 1 does not fit.")

    st.markdown("#### Breakdown by category and phase")
    st.caption("Overhead is the CUDA context plus the caching allocator's fragmentation, counted once at the "
               "peak. GiB = 2³⁰ bytes; the CSV has exact bytes.")
    table = arrow_table(breakdown_table(est))
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in table.column_names
                                if c.endswith("(GiB)") or c.endswith("(%)")})
    name = f"memplan_{run.model.name}_{run.method}.csv"
    st.download_button("Download the numbers (CSV, bytes)", csv_text(csv_table(est)), name,
                       "text/csv", icon=":material/download:", key="dl_estimate")


if __name__ == "__main__":
    render()
