"""Plotly figure builders for the dashboard: one colour per memory category, GiB axes.

Every builder takes numbers the library computed (bytes, as integers) and only
converts them to GiB (2**30) for display. The same `CATEGORY_COLORS` is used by
every page, so a category has one colour across the estimate, the method
comparison, the sweeps and the validation report.
"""
from __future__ import annotations

import plotly.graph_objects as go

from memplan import CATEGORIES
from memplan.units import GiB

CATEGORY_COLORS = {
    "parameters": "#4C78A8",  # blue
    "gradients": "#F58518",  # orange
    "optimizer_states": "#E45756",  # red
    "projectors": "#B279A2",  # purple
    "activations": "#54A24B",  # green
    "temporaries": "#EECA3B",  # yellow
    "overhead": "#9D9D9D",  # grey: CUDA context + allocator fragmentation
}
CATEGORY_LABELS = {
    "parameters": "Parameters",
    "gradients": "Gradients",
    "optimizer_states": "Optimizer states",
    "projectors": "Projectors",
    "activations": "Activations",
    "temporaries": "Temporaries",
    "overhead": "Overhead (CUDA context + fragmentation)",
}
PHASE_LABELS = {
    "forward": "Forward",
    "backward": "Backward",
    "optimizer_step": "Optimizer step",
    "refresh_step": "Refresh step",
}
# Lines for methods and GPUs, chosen to stay apart from the category colours.
LINE_COLORS = ("#1F77B4", "#D62728", "#2CA02C", "#9467BD", "#8C564B", "#E377C2", "#17BECF", "#7F7F7F",
               "#BCBD22", "#FF7F0E", "#393B79", "#637939", "#843C39")
CAPACITY_COLOR = "#222222"
FIT_COLOR, NOFIT_COLOR = "#2E7D32", "#C62828"
GIB_AXIS = "Memory (GiB)"

assert set(CATEGORY_COLORS) == set(CATEGORIES), "one colour per memory category"


def gib(n_bytes) -> float:
    return n_bytes / GiB


def _layout(fig: go.Figure, *, title: str, height: int = 460, **axes) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 17}},
        template="plotly_white",
        height=height,
        font={"size": 13},
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.15, "xanchor": "left", "x": 0.0,
                "title": {"text": ""}},
        hoverlabel={"namelength": -1},
        **axes,
    )
    return fig


def _capacity_line(fig: go.Figure, capacity_bytes: int, label: str, *, horizontal_bars: bool = False,
                   color: str = CAPACITY_COLOR, dash: str = "dash") -> None:
    text = f"{label}: {gib(capacity_bytes):.1f} GiB"
    note = {"bgcolor": "rgba(255,255,255,0.85)", "font": {"size": 12, "color": color}}
    if horizontal_bars:
        fig.add_vline(x=gib(capacity_bytes), line={"color": color, "dash": dash, "width": 2},
                      annotation_text=text, annotation_position="top right", annotation=note)
    else:
        fig.add_hline(y=gib(capacity_bytes), line={"color": color, "dash": dash, "width": 2},
                      annotation_text=text, annotation_position="top left", annotation=note)


def _fmt_size(n: int) -> str:
    """4096 -> '4k', 1048576 -> '1M', 128 -> '128': tick labels for powers of two."""
    for unit, size in (("M", 1 << 20), ("k", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _log_axis(title: str, values) -> dict:
    """A log x axis with a tick at each swept value (powers of two read better than 10^k)."""
    vals = sorted(set(values))
    return {"title": title, "type": "log", "tickvals": vals, "ticktext": [_fmt_size(v) for v in vals]}


def _mark_x(fig: go.Figure, x: int, text: str, color: str = FIT_COLOR) -> None:
    """A dotted vertical marker on a log x axis (the note's x is in log10 units there)."""
    import math

    fig.add_vline(x=x, line={"color": color, "width": 2, "dash": "dot"})
    fig.add_annotation(x=math.log10(x), y=1.0, yref="paper", text=text, showarrow=False, xanchor="left",
                       yanchor="top", xshift=4, bgcolor="rgba(255,255,255,0.85)", font={"size": 12, "color": color})


def _category_trace(cat: str, x, y, *, orientation: str = "v", show_legend: bool = True) -> go.Bar:
    vals = [gib(v) for v in (x if orientation == "h" else y)]
    other = y if orientation == "h" else x
    return go.Bar(
        name=CATEGORY_LABELS[cat], marker_color=CATEGORY_COLORS[cat], orientation=orientation,
        x=vals if orientation == "h" else other, y=other if orientation == "h" else vals,
        legendgroup=cat, showlegend=show_legend,
        hovertemplate=f"{CATEGORY_LABELS[cat]}: %{{{'x' if orientation == 'h' else 'y'}:.2f}} GiB<extra></extra>",
    )


def phase_bars(phases: dict, overhead: int, peak_phase: str, capacity_bytes: int | None = None,
               gpu_label: str = "GPU capacity") -> go.Figure:
    """One stacked bar per phase (categories + overhead), the peak phase marked, capacity as a line."""
    names = [PHASE_LABELS[p] for p in phases]
    fig = go.Figure()
    for cat in CATEGORIES:
        ys = [overhead if cat == "overhead" else phases[p].get(cat, 0) for p in phases]
        fig.add_trace(_category_trace(cat, names, ys))
    totals = {p: sum(v.values()) + overhead for p, v in phases.items()}
    fig.add_annotation(x=PHASE_LABELS[peak_phase], y=gib(totals[peak_phase]), yshift=12, showarrow=False,
                       text=f"<b>peak: {gib(totals[peak_phase]):.2f} GiB</b>", font={"size": 14})
    top = max(totals.values())
    if capacity_bytes is not None:
        _capacity_line(fig, capacity_bytes, gpu_label)
        top = max(top, capacity_bytes)
    fig.update_layout(barmode="stack", bargap=0.35)
    return _layout(fig, title="Memory per phase of one training step", yaxis_title=GIB_AXIS,
                   yaxis_range=[0, gib(top) * 1.12], xaxis_title="Phase")


def method_bars(rows: list[dict], capacity_bytes: int | None = None, gpu_label: str = "GPU capacity",
                selected: str | None = None) -> go.Figure:
    """Horizontal stacked bars, one per method (rows sorted by the caller), categories at the peak.

    Each bar ends with its total and the saving against AdamW; `selected` is set in bold.
    """
    labels = [f"<b>{r['method']}</b>" if r["method"] == selected else r["method"] for r in rows]
    fig = go.Figure()
    for cat in CATEGORIES:
        fig.add_trace(_category_trace(cat, [r["breakdown"].get(cat, 0) for r in rows], labels, orientation="h"))
    for label, r in zip(labels, rows):
        saving = "" if r["method"] == "adamw" else f"  ({-r['saved_vs_adamw_pct']:+.0f}% vs AdamW)"
        fig.add_annotation(x=gib(r["device_total_bytes"]), y=label, text=f"{gib(r['device_total_bytes']):.1f} GiB{saving}",
                           showarrow=False, xanchor="left", xshift=6, font={"size": 12})
    top = max((r["device_total_bytes"] for r in rows), default=0)
    if capacity_bytes is not None:
        _capacity_line(fig, capacity_bytes, gpu_label, horizontal_bars=True)
        top = max(top, capacity_bytes)
    fig.update_layout(barmode="stack", bargap=0.3)
    return _layout(fig, title="Peak memory by method (device total, smallest first)",
                   height=max(380, 44 * len(rows) + 170), xaxis_title=GIB_AXIS,
                   xaxis_range=[0, gib(top) * 1.3], yaxis={"autorange": "reversed", "title": ""})


def rank_lines(points: dict[str, list[tuple[int, int]]], capacities: dict[str, int],
               largest: dict[str, tuple[int, int]] | None = None) -> go.Figure:
    """Device total against rank, one line per method; GPU capacities as horizontal lines.

    points: {method: [(rank, bytes), ...]}; capacities: {gpu label: bytes};
    largest: {method: (rank, bytes)}, the largest rank that fits the first GPU, marked.
    """
    fig = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
    symbols = ("circle", "square", "diamond", "triangle-up", "x", "cross", "triangle-down")
    for i, (method, pts) in enumerate(points.items()):
        fig.add_trace(go.Scatter(
            x=[r for r, _ in pts], y=[gib(b) for _, b in pts], name=method, mode="lines+markers",
            line={"color": LINE_COLORS[i % len(LINE_COLORS)], "width": 2.5, "dash": dashes[i % len(dashes)]},
            marker={"size": 7, "symbol": symbols[i % len(symbols)]},
            hovertemplate=f"{method}, rank %{{x}}: %{{y:.2f}} GiB<extra></extra>"))
    for (method, (r, b)), i in zip((largest or {}).items(), range(len(LINE_COLORS))):
        color = LINE_COLORS[list(points).index(method) % len(LINE_COLORS)] if method in points else CAPACITY_COLOR
        fig.add_trace(go.Scatter(
            x=[r], y=[gib(b)], mode="markers", showlegend=False, name=f"{method}: largest rank that fits",
            marker={"symbol": "star", "size": 17, "color": color, "line": {"color": "white", "width": 1}},
            hovertemplate=f"{method}: largest rank that fits = %{{x}} (%{{y:.2f}} GiB)<extra></extra>"))
    for i, (label, cap) in enumerate(capacities.items()):
        _capacity_line(fig, cap, label, dash=("dash", "dot", "dashdot", "longdash")[i % 4])
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="★ largest rank that fits",
                             marker={"symbol": "star", "size": 13, "color": CAPACITY_COLOR}))
    ranks = [r for pts in points.values() for r, _ in pts]
    return _layout(fig, title="Peak memory against rank", xaxis=_log_axis("Rank r", ranks),
                   yaxis_title=GIB_AXIS, yaxis_rangemode="tozero")


def sweep_area(xs: list[int], breakdowns: list[dict], x_title: str, capacity_bytes: int | None = None,
               gpu_label: str = "GPU capacity", largest: int | None = None) -> go.Figure:
    """Stacked areas of the peak breakdown against batch size or sequence length."""
    fig = go.Figure()
    for cat in CATEGORIES:
        fig.add_trace(go.Scatter(
            x=xs, y=[gib(b.get(cat, 0)) for b in breakdowns], name=CATEGORY_LABELS[cat], stackgroup="one",
            mode="lines", line={"width": 0.5, "color": CATEGORY_COLORS[cat]}, fillcolor=CATEGORY_COLORS[cat],
            legendgroup=cat, hovertemplate=f"{CATEGORY_LABELS[cat]}: %{{y:.2f}} GiB<extra></extra>"))
    if capacity_bytes is not None:
        _capacity_line(fig, capacity_bytes, gpu_label)
    if largest is not None:
        _mark_x(fig, largest, f"largest that fits: {largest:,}")
    return _layout(fig, title=f"Against {x_title.lower()}", height=440, xaxis=_log_axis(x_title, xs),
                   yaxis_title=GIB_AXIS, yaxis_rangemode="tozero")


def hardware_bars(rows: list[dict]) -> go.Figure:
    """Memory needed per GPU against the GPU's capacity, one bar per option in the given order."""
    labels = [r["label"] + (f"  ·  ${r['price_per_hour_usd']:.2f}/h" if r.get("price_per_hour_usd") is not None
                            else "") for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(y=labels, x=[gib(r["capacity_bytes"]) for r in rows], orientation="h",
                         name="Capacity per GPU", marker_color="#D9D9D9",
                         hovertemplate="capacity %{x:.1f} GiB<extra></extra>"))
    fig.add_trace(go.Bar(y=labels, x=[gib(r["required_bytes"]) for r in rows], orientation="h",
                         name="Needed per GPU (fits)", width=0.45,
                         marker_color=[FIT_COLOR if r["fits"] else NOFIT_COLOR for r in rows],
                         hovertemplate="needed %{x:.2f} GiB<extra></extra>"))
    fig.update_layout(barmode="overlay")
    return _layout(fig, title="Memory needed per GPU against capacity, cheapest first",
                   height=max(360, 30 * len(rows) + 160), xaxis_title=GIB_AXIS,
                   yaxis={"autorange": "reversed", "title": ""})


def validation_bars(estimated: dict[str, int], measured: dict[str, int], title: str) -> go.Figure:
    """Estimated against measured, per category: grouped bars in the category colour (measured hatched)."""
    cats = [c for c in CATEGORIES if c in estimated or c in measured]
    names = [CATEGORY_LABELS[c] for c in cats]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[gib(estimated.get(c, 0)) for c in cats], name="Estimated",
                         marker={"color": [CATEGORY_COLORS[c] for c in cats]},
                         hovertemplate="estimated %{y:.3f} GiB<extra></extra>"))
    fig.add_trace(go.Bar(x=names, y=[gib(measured.get(c, 0)) for c in cats], name="Measured (hatched)",
                         marker={"color": [CATEGORY_COLORS[c] for c in cats], "pattern": {"shape": "/"},
                                 "opacity": 0.65},
                         hovertemplate="measured %{y:.3f} GiB<extra></extra>"))
    fig.update_layout(barmode="group")
    return _layout(fig, title=title, yaxis_title=GIB_AXIS, height=420)


def error_bars(labels: list[str], errors_pct: list[float], title: str, tolerance_pct: float = 3.0) -> go.Figure:
    """Signed relative error per point, in percent of the measured value; the tolerance as a band.

    3%: the peak tolerance of `memplan validate` (memplan.measure.validate.PEAK_TOLERANCE).
    """
    fig = go.Figure(go.Bar(x=labels, y=errors_pct, name="error",
                           marker_color=[FIT_COLOR if abs(e) <= tolerance_pct else NOFIT_COLOR for e in errors_pct],
                           hovertemplate="%{x}: %{y:+.2f}%<extra></extra>"))
    fig.add_hrect(y0=-tolerance_pct, y1=tolerance_pct, fillcolor=FIT_COLOR, opacity=0.08, line_width=0,
                  annotation_text=f"±{tolerance_pct:g}%", annotation_position="top left")
    fig.add_hline(y=0, line={"color": CAPACITY_COLOR, "width": 1})
    top = max([abs(e) for e in errors_pct] + [tolerance_pct]) * 1.25
    return _layout(fig, title=title, yaxis_title="(estimated − measured) / measured (%)", height=420,
                   showlegend=False, yaxis_range=[-top, top])


def category_bar(breakdown: dict[str, int], title: str) -> go.Figure:
    """One horizontal stacked bar of a breakdown by category (a CUDA snapshot, say)."""
    fig = go.Figure()
    for cat in CATEGORIES:
        if breakdown.get(cat):
            fig.add_trace(_category_trace(cat, [breakdown[cat]], [""], orientation="h"))
    fig.update_layout(barmode="stack")
    return _layout(fig, title=title, height=260, xaxis_title=GIB_AXIS)
