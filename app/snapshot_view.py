"""The Validation page's CUDA snapshot section: what an uploaded snapshot holds, its
replay through memplan's allocator model, and a segment map where fragmentation shows.

The upload is read by memplan.snapshot (every pickle global refused, cost bounded by
the file's size; no torch needed).
"""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from memplan.app import charts
from memplan.app.table import arrow_table, csv_text
from memplan.units import GiB, MiB

FREE_COLOR = "#d9d9d9"
MAP_SEGMENTS = 60  # the largest segments drawn in the map
UPLOAD_LIMIT = 16 * MiB  # memplan.snapshot.UPLOAD_MAX_BYTES: a served dashboard reads no more


def read(data: bytes):
    """(snapshot, analysis, replay or None, why no replay) from the uploaded bytes."""
    from memplan.errors import MemplanError
    from memplan.replay import replay
    from memplan.snapshot import UPLOAD_MAX_BYTES, loads
    from memplan.snapshot_report import analyze

    snap = loads(data, UPLOAD_MAX_BYTES)
    a = analyze(snap)
    try:
        return snap, a, replay(snap), ""
    except MemplanError as e:
        return snap, a, None, str(e)


def segment_map(snap, limit: int = MAP_SEGMENTS) -> go.Figure:
    """One bar per segment (the ``limit`` largest, by address), its blocks laid along it:
    coloured by category when allocated, grey when free (free grey inside a used segment is
    fragmentation: reserved, not allocated, and not returned by empty_cache)."""
    from memplan.snapshot_report import segment_map as rows_of

    rows = rows_of(snap, limit)
    fig = go.Figure()
    order = [c for c in charts.CATEGORY_COLORS if c != "overhead"] + ["other", "free"]
    colors = {**charts.CATEGORY_COLORS, "other": "#7f7f7f", "free": FREE_COLOR}
    labels = {}
    for r in rows:
        labels[r["segment"]] = f"{r['segment_address']:#x}"
    for cat in order:
        sel = [r for r in rows if r["category"] == cat]
        if not sel:
            continue
        fig.add_trace(go.Bar(
            y=[labels[r["segment"]] for r in sel], x=[r["size"] / MiB for r in sel],
            base=[r["offset"] / MiB for r in sel], orientation="h", name=cat.replace("_", " "),
            marker={"color": colors.get(cat, "#7f7f7f"), "line": {"color": "white", "width": 0.5}},
            hovertemplate="%{y}<br>offset %{base:.1f} MiB<br>%{x:.2f} MiB " + cat + "<extra></extra>"))
    fig.update_layout(barmode="overlay", height=max(320, 18 * len(labels) + 120),
                      title=f"Segment map: the {len(labels)} largest segments, blocks by category (grey: free)",
                      xaxis_title="offset in the segment (MiB)", yaxis_title="segment address",
                      yaxis={"type": "category", "autorange": "reversed"}, legend={"orientation": "h", "y": -0.15},
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def section(estimate_run=None) -> None:
    """The uploader, then what the uploaded snapshot holds; `estimate_run()` gives (the sidebar run's estimate
    or None, its label) for a column beside the snapshot's categories, called only once a snapshot is read."""
    st.markdown("### CUDA memory snapshot")
    st.caption("A snapshot from `torch.cuda.memory._dump_snapshot(...)`, plain or gzip. It is read by "
               "memplan's restricted unpickler, which refuses every import: no code in the file runs.")
    up = st.file_uploader("CUDA memory snapshot (.pickle, .pickle.gz)", type=["pickle", "pkl", "gz"],
                          key="val_snapshot")
    if up is None:
        return
    try:
        if up.size > UPLOAD_LIMIT:
            raise ValueError(f"the file is {up.size / MiB:,.0f} MiB; uploads are read up to "
                             f"{UPLOAD_LIMIT // MiB} MiB (use 'memplan snapshot FILE' for larger ones)")
        snap, a, r, why = read(up.getvalue())
    except Exception as e:  # an untrusted upload: any failure is one message, never a traceback
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        st.error(f"Could not read '{up.name}' as a CUDA memory snapshot: {reason}")
        return
    c = st.columns(4)
    c[0].metric("Peak allocated (trace)", f"{a['peak_allocated_bytes'] / GiB:.2f} GiB",
                help="From the allocator's trace: the most the tensors held at once (requests rounded to 512 B).")
    c[1].metric("Peak reserved (trace)", f"{a['peak_reserved_bytes'] / GiB:.2f} GiB",
                help="The most the caching allocator held from CUDA during the trace.")
    c[2].metric("Allocated at the dump", f"{a['allocated_bytes'] / GiB:.2f} GiB")
    c[3].metric("Reserved at the dump", f"{a['reserved_bytes'] / GiB:.2f} GiB",
                help="Segments the caching allocator holds, used or not.")
    f = a["fragmentation"]
    st.markdown(f"**Fragmentation at the dump** (reserved - allocated): {f['bytes'] / GiB:.2f} GiB, of which "
                f"{f['in_used_segments'] / GiB:.2f} GiB is free space inside segments that also hold live blocks "
                f"(stays reserved) and {f['in_free_segments'] / GiB:.2f} GiB whole free segments "
                "(`empty_cache()` returns those).")
    if r is not None:
        st.markdown(f"**Replayed through memplan's allocator model** ({r.seconds:.2f} s): addresses "
                    f"{r.addresses_matched:,}/{r.allocations:,} matched, segment layouts {r.segments_matched}/"
                    f"{r.segments}; reserved {r.reserved_bytes / GiB:.2f} GiB (real {r.real_reserved_bytes / GiB:.2f}),"
                    f" peak reserved {r.peak_reserved_bytes / GiB:.2f} GiB (real "
                    f"{r.real_peak_reserved_bytes / GiB:.2f}).")
    else:
        st.info(f"Not replayed: {why}")
    if snap.segments:
        st.plotly_chart(segment_map(snap), width="stretch", key="snapshot_map")
    cats = {k: v for k, v in a["categories_at_peak"].items() if v}
    if cats:
        st.plotly_chart(charts.category_bar(cats, f"{up.name}: allocated by category at the peak"), width="stretch")
    rows = [{"category": k, "at peak (GiB)": a["categories_at_peak"][k] / GiB,
             "at the dump (GiB)": a["categories_final"][k] / GiB} for k in a["categories_at_peak"]]
    estimate, estimate_label = estimate_run() if estimate_run is not None else (None, "")
    if estimate is not None:
        for row in rows:
            v = estimate.phases[estimate.peak_phase].get(row["category"])
            row[f"estimate {estimate_label} (GiB)"] = None if v is None else v / GiB
    st.dataframe(arrow_table(rows), hide_index=True)
    if a["largest_blocks"]:
        st.markdown("**Largest live blocks**")
        st.dataframe(arrow_table([{"address": hex(b["address"]), "MiB": b["size"] / MiB, "category": b["category"],
                                   "allocated at": b["where"]} for b in a["largest_blocks"]]), hide_index=True)
    flat = [{"quantity": k, "bytes": int(v)} for k, v in a.items() if isinstance(v, int) and not isinstance(v, bool)]
    flat += [{"quantity": f"category_at_peak:{k}", "bytes": int(v)} for k, v in a["categories_at_peak"].items()]
    if r is not None:
        flat += [{"quantity": f"replay:{k}", "bytes": v} for k, v in r.to_dict().items() if isinstance(v, int)]
    st.download_button("Download the snapshot summary (CSV, bytes)", csv_text(flat),
                       "memplan_snapshot.csv", "text/csv", icon=":material/download:", key="dl_snapshot")
