"""Plotly figure builders for the dashboard: one colour per memory category, GiB axes.

Every builder takes numbers the library computed (bytes, as integers) and only
converts them to GiB (2**30) for display. The same `CATEGORY_COLORS` is used by
every page, so a category has one colour across the estimate, the method
comparison, the sweeps and the validation report.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go

from memplan import CATEGORIES
from memplan.units import gib

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



def _layout(fig: go.Figure, *, title: str, height: int = 460, **axes) -> go.Figure:
    """Title, size, legend below, and the shapes and notes of the figure, in one (fast) layout update.

    No plotly template: Streamlit's theme styles the charts (and a template costs ~40 ms per figure).
    """
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 17}},
        height=height,
        font={"size": 13},
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.15, "xanchor": "left", "x": 0.0,
                "title": {"text": ""}},
        hoverlabel={"namelength": -1},
        **axes,
    )
    return fig


def _rule(axis: str, value: float, color: str, dash: str = "dash", width: float = 2) -> dict:
    """A line across the plot at y = value (axis "y") or x = value (axis "x"), as a layout shape.

    Shapes go in with the layout: `fig.add_hline` validates each one and costs ~30 ms.
    """
    line = {"color": color, "dash": dash, "width": width}
    if axis == "y":
        return {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": value, "y1": value, "line": line}
    return {"type": "line", "yref": "paper", "y0": 0, "y1": 1, "x0": value, "x1": value, "line": line}


def _note(text: str, color: str = CAPACITY_COLOR, **where) -> dict:
    return {"text": text, "showarrow": False, "bgcolor": "rgba(255,255,255,0.85)",
            "font": {"size": 12, "color": color}, **where}


def _capacity_line(shapes: list, notes: list, capacity_bytes: int, label: str, *, horizontal_bars: bool = False,
                   color: str = CAPACITY_COLOR, dash: str = "dash") -> None:
    text = f"{label}: {gib(capacity_bytes):.1f} GiB"
    if horizontal_bars:
        shapes.append(_rule("x", gib(capacity_bytes), color, dash))
        notes.append(_note(text, color, x=gib(capacity_bytes), y=1, yref="paper", xanchor="left", yanchor="bottom"))
    else:
        shapes.append(_rule("y", gib(capacity_bytes), color, dash))
        notes.append(_note(text, color, x=0, xref="paper", y=gib(capacity_bytes), xanchor="left", yanchor="bottom"))


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


def _mark_x(shapes: list, notes: list, x: int, text: str, color: str = FIT_COLOR) -> None:
    """A dotted vertical marker on a log x axis (a note's x is in log10 units there, a shape's is not)."""
    shapes.append(_rule("x", x, color, "dot"))
    notes.append(_note(text, color, x=math.log10(x), y=1.0, yref="paper", xanchor="left", yanchor="top", xshift=4))


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
    shapes, notes = [], [{"x": PHASE_LABELS[peak_phase], "y": gib(totals[peak_phase]), "yshift": 12,
                          "showarrow": False, "text": f"<b>peak: {gib(totals[peak_phase]):.2f} GiB</b>",
                          "font": {"size": 14}}]
    top = max(totals.values())
    if capacity_bytes is not None:
        _capacity_line(shapes, notes, capacity_bytes, gpu_label)
        top = max(top, capacity_bytes)
    return _layout(fig, title="Memory per phase of one training step", yaxis_title=GIB_AXIS,
                   yaxis_range=[0, gib(top) * 1.12], barmode="stack", bargap=0.35, shapes=shapes, annotations=notes)


def method_bars(rows: list[dict], capacity_bytes: int | None = None, gpu_label: str = "GPU capacity",
                selected: str | None = None) -> go.Figure:
    """Horizontal stacked bars, one per method (rows sorted by the caller), categories at the peak.

    Each bar ends with its total and the saving against AdamW; `selected` is set in bold.
    """
    labels = [f"<b>{r['method']}</b>" if r["method"] == selected else r["method"] for r in rows]
    fig = go.Figure()
    for cat in CATEGORIES:
        fig.add_trace(_category_trace(cat, [r["breakdown"].get(cat, 0) for r in rows], labels, orientation="h"))
    shapes, notes = [], []
    for label, r in zip(labels, rows):
        saving = "" if r["method"] == "adamw" else f"  ({-r['saved_vs_adamw_pct']:+.0f}% vs AdamW)"
        total = gib(r["device_total_bytes"])
        notes.append({"x": total, "y": label, "text": f"{total:.1f} GiB{saving}", "showarrow": False,
                      "xanchor": "left", "xshift": 6, "font": {"size": 12}})
    top = max((r["device_total_bytes"] for r in rows), default=0)
    if capacity_bytes is not None:
        _capacity_line(shapes, notes, capacity_bytes, gpu_label, horizontal_bars=True)
        top = max(top, capacity_bytes)
    return _layout(fig, title="Peak memory by method (device total, smallest first)",
                   barmode="stack", bargap=0.3, shapes=shapes, annotations=notes,
                   height=max(380, 44 * len(rows) + 170),
                   xaxis={"range": [0, gib(top) * 1.3], "ticksuffix": " GiB", "title": ""},
                   yaxis={"autorange": "reversed", "title": ""})


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
    shapes, notes = [], []
    for i, (label, cap) in enumerate(capacities.items()):
        _capacity_line(shapes, notes, cap, label, dash=("dash", "dot", "dashdot", "longdash")[i % 4])
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="★ largest rank that fits",
                             marker={"symbol": "star", "size": 13, "color": CAPACITY_COLOR}))
    ranks = [r for pts in points.values() for r, _ in pts]
    return _layout(fig, title="Peak memory against rank", xaxis=_log_axis("Rank r", ranks),
                   yaxis_title=GIB_AXIS, yaxis_rangemode="tozero", shapes=shapes, annotations=notes)


def sweep_area(xs: list[int], breakdowns: list[dict], x_title: str, capacity_bytes: int | None = None,
               gpu_label: str = "GPU capacity", largest: int | None = None) -> go.Figure:
    """Stacked areas of the peak breakdown against batch size or sequence length."""
    fig = go.Figure()
    for cat in CATEGORIES:
        fig.add_trace(go.Scatter(
            x=xs, y=[gib(b.get(cat, 0)) for b in breakdowns], name=CATEGORY_LABELS[cat], stackgroup="one",
            mode="lines", line={"width": 0.5, "color": CATEGORY_COLORS[cat]}, fillcolor=CATEGORY_COLORS[cat],
            legendgroup=cat, showlegend=False,
            hovertemplate=f"{CATEGORY_LABELS[cat]}: %{{y:.2f}} GiB<extra></extra>"))
    shapes, notes = [], []
    if capacity_bytes is not None:
        _capacity_line(shapes, notes, capacity_bytes, gpu_label)
    if largest is not None:
        _mark_x(shapes, notes, largest, f"largest that fits: {largest:,}")
    return _layout(fig, title=f"Against {x_title.lower()}", height=440, xaxis=_log_axis(x_title, xs),
                   yaxis_title=GIB_AXIS, yaxis_rangemode="tozero", shapes=shapes, annotations=notes)


def legend_html(categories=CATEGORIES) -> str:
    """The category legend as one line of HTML chips, for charts drawn without their own legend."""
    chips = (f'<span style="white-space:nowrap;margin-right:1.1em"><span style="display:inline-block;width:.8em;'
             f'height:.8em;background:{CATEGORY_COLORS[c]};margin-right:.35em;vertical-align:-.05em"></span>'
             f"{CATEGORY_LABELS[c]}</span>" for c in categories)
    return f'<div style="font-size:.85rem;line-height:1.9">{"".join(chips)}</div>'


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
    return _layout(fig, barmode="overlay", title="Memory needed per GPU against capacity, cheapest first",
                   height=max(360, 34 * len(rows) + 160), xaxis={"ticksuffix": " GiB", "title": ""},
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
    return _layout(fig, barmode="group", title=title, yaxis_title=GIB_AXIS, height=420)


def error_strip(groups: list[str], labels: list[str], errors_pct: list[float], title: str,
                tolerance_pct: float = 3.0) -> go.Figure:
    """Signed relative error of each point (percent of the measured value), one column per group (method),
    the tolerance as a band. 3%: the peak tolerance of `memplan validate` (memplan.measure.validate)."""
    names = list(dict.fromkeys(groups))
    xs, seen = [], {}
    size = {g: groups.count(g) for g in names}
    for g in groups:  # spread the points of a group side by side, so equal errors stay visible
        k = seen[g] = seen.get(g, -1) + 1
        xs.append(names.index(g) + (k - (size[g] - 1) / 2) * min(0.6 / size[g], 0.08))
    fig = go.Figure(go.Scatter(
        x=xs, y=errors_pct, text=labels, mode="markers", name="points",
        marker={"size": 11, "line": {"color": "white", "width": 1},
                "color": [FIT_COLOR if abs(e) <= tolerance_pct else NOFIT_COLOR for e in errors_pct]},
        hovertemplate="%{text}: %{y:+.2f}%<extra></extra>"))
    band = {"type": "rect", "xref": "paper", "x0": 0, "x1": 1, "y0": -tolerance_pct, "y1": tolerance_pct,
            "fillcolor": FIT_COLOR, "opacity": 0.08, "line": {"width": 0}, "layer": "below"}
    notes = [_note(f"tolerance ±{tolerance_pct:g}%", FIT_COLOR, x=0, xref="paper", y=tolerance_pct,
                   xanchor="left", yanchor="bottom")]
    top = max([abs(e) for e in errors_pct] + [tolerance_pct]) * 1.25
    return _layout(fig, title=title, yaxis_title="(estimated − measured) / measured (%)", height=420,
                   showlegend=False, yaxis_range=[-top, top],
                   # every method labelled: slanted labels with their own margin, none dropped or clipped
                   xaxis={"tickvals": list(range(len(names))), "ticktext": names, "title": "", "showgrid": False,
                          "tickangle": -30, "automargin": True,
                          "range": [-0.6, len(names) - 0.4], "zeroline": False},
                   shapes=[band, _rule("y", 0, CAPACITY_COLOR, "solid", 1)], annotations=notes)


def category_bar(breakdown: dict[str, int], title: str) -> go.Figure:
    """One horizontal stacked bar of a breakdown by category (a CUDA snapshot, say)."""
    fig = go.Figure()
    for cat in CATEGORIES:
        if breakdown.get(cat):
            fig.add_trace(_category_trace(cat, [breakdown[cat]], [""], orientation="h"))
    return _layout(fig, barmode="stack", title=title, height=260, xaxis_title=GIB_AXIS)
