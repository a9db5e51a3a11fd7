"""Sweep page: memory against rank (one line per projection method) and against batch / sequence."""
from __future__ import annotations

import streamlit as st

from memplan import CATEGORIES, METHODS
from memplan.app import charts, data, state
from memplan.app.table import csv_text
from memplan.estimator import capacity_bytes
from memplan.profiles import load_gpus

COMPARE_GPUS = ("rtx-4090", "a100-40gb", "a100-80gb")


def rank_csv(points: dict, largest: dict) -> list[dict]:
    """The swept ranks, then each method's largest rank that fits (marked), device totals in bytes."""
    rows = [{"method": m, "rank": r, "device_total_bytes": b, "largest_rank_that_fits": False}
            for m, pts in points.items() for r, b in pts]
    rows += [{"method": m, "rank": r, "device_total_bytes": b, "largest_rank_that_fits": True}
             for m, (r, b) in largest.items()]
    return rows


def axis_csv(axis: str, xs: list[int], bds: list[dict]) -> list[dict]:
    return [{axis: x, **{f"{c}_bytes": b.get(c, 0) for c in CATEGORIES}, "device_total_bytes": sum(b.values())}
            for x, b in zip(xs, bds)]


def _short(gid: str) -> str:
    return load_gpus()[gid].name.replace("NVIDIA ", "").replace("GeForce ", "")


def rank_section(run) -> None:
    st.markdown("### Memory against rank")
    c1, c2 = st.columns(2)
    rank_methods = [m for m, spec in METHODS.items() if spec.uses_rank]
    methods = c1.multiselect("Methods", rank_methods, default=list(data.PROJECTION_METHODS), key="sw_methods",
                             help="Projection methods by default; adapter methods (LoRA, ReLoRA, low-rank) "
                                  "can be added.")
    default_gpus = [run.gpu] + [gid for gid in COMPARE_GPUS if gid != run.gpu][:2]
    gpus = c2.multiselect("GPU capacities", list(load_gpus()), default=default_gpus, format_func=state.gpu_label,
                          key=f"sw_gpus_{run.gpu}", help="Horizontal lines; the ★ marks the largest rank that "
                                                         "fits the first GPU.")
    if not methods:
        st.info("Pick at least one method.")
        return
    opts = run.options()
    points = state.shown(data.rank_sweep, run.model, tuple(methods), opts)
    first = gpus[0] if gpus else run.gpu
    largest = state.shown(data.largest_ranks, run.model, tuple(methods), first, opts)
    caps = {f"{_short(g)}": capacity_bytes(load_gpus()[g]) for g in gpus}
    st.plotly_chart(charts.rank_lines(points, caps, largest), width="stretch")
    if largest:
        st.caption(f"Largest rank that fits {_short(first)} (`memplan.max_rank`, up to the smallest projected "
                   "dimension): "
                   + ", ".join(f"**{m}** {r}" for m, (r, _) in largest.items()))
    else:
        st.caption(f"No rank fits {_short(first)} for these methods with this run.")
    st.download_button("Download the rank sweep (CSV, bytes)", csv_text(rank_csv(points, largest)),
                       f"memplan_rank_sweep_{run.model.name}.csv", "text/csv", icon=":material/download:",
                       key="dl_rank")


def axis_section(run, axis: str, values: tuple[int, ...], title: str, col) -> None:
    opts = run.options()
    best = state.shown(data.largest_size, run.model, run.method, run.gpu, opts, axis)
    while best and values[-1] < 2 * best and values[-1] < (1 << 20):  # show a little past the largest fit
        values = (*values, values[-1] * 2)
    xs, bds = state.shown(data.axis_sweep, run.model, run.method, opts, axis, values)
    cap = capacity_bytes(run.gpu_profile)
    over = [i for i, b in enumerate(bds) if sum(b.values()) > 2 * cap]
    if over and over[0] >= 3:  # stop a little past twice the capacity, so the fitting range stays readable
        xs, bds = xs[: over[0] + 1], bds[: over[0] + 1]
    with col:
        st.plotly_chart(charts.sweep_area(xs, bds, title, cap, f"{_short(run.gpu)} capacity", best or None),
                        width="stretch")
        other = (f"sequence length {run.seq_len}" if axis == "batch_size" else f"batch size {run.batch_size}")
        st.caption(f"Largest {title.lower()} that fits {_short(run.gpu)} at {other}: **{best}**"
                   if best else f"Nothing fits {_short(run.gpu)} at {other}, even {title.lower()} 1.")
        st.download_button(f"Download the {title.lower()} sweep (CSV, bytes)",
                           csv_text(axis_csv(axis, xs, bds)),
                           f"memplan_{axis}_sweep_{run.model.name}_{run.method}.csv", "text/csv",
                           icon=":material/download:", key=f"dl_{axis}")


def render() -> None:
    run = state.inputs()
    st.markdown(f"## Sweeps · {run.model.name}")
    st.caption("Every point is one estimate of the run in the sidebar with one input changed. "
               "Memory is the device total at the peak phase (GiB = 2³⁰ bytes).")
    rank_section(run)
    st.markdown(f"### Memory against batch size and sequence length · {run.method}")
    st.markdown(charts.legend_html(), unsafe_allow_html=True)
    c1, c2 = st.columns(2)
    axis_section(run, "batch_size", data.BATCH_SIZES, "Batch size", c1)
    axis_section(run, "seq_len", data.SEQ_LENS, "Sequence length", c2)


if __name__ == "__main__":
    render()
