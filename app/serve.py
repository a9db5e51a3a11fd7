"""The server that `memplan app` starts: Streamlit, with the dashboard's libraries loaded at start.

On a fresh server the first run of a page would import pyarrow (and numpy under it),
plotly's figure classes and memplan's modules, build the estimator's tables, and let
Streamlit's first element walk every loaded module once (it calls `inspect.stack()` to
tell a REPL from `streamlit run`): all of it for the first visitor. No page imports
pandas (app/table.py builds the tables without it).
`python -m memplan.app.serve run app/dashboard.py ...` does that loading first and
then starts Streamlit exactly as `python -m streamlit run ...` does: the server
comes up that much later, and every page's first run is as fast as a later one
(benchmarks/dashboard_speed.py). Not in a background thread: a page's run could meet
a module that thread has half imported (plotly, for one, looks optional libraries up
in sys.modules). Nothing here changes what a page shows; a failure here only leaves
the first run as slow as it was.
"""
from __future__ import annotations

import sys


def preload() -> None:
    """Import what every page uses and run each kind of chart and table once, off any page."""
    try:
        import inspect

        import plotly.io
        import pyarrow.ipc  # noqa: F401  (Streamlit sends tables as Arrow IPC; pyarrow imports numpy)

        import memplan
        import memplan.planner  # noqa: F401
        from memplan.app import charts, report, table  # noqa: F401  (not data, state: their caches need the runtime)

        est = memplan.estimate("llama-7b", "galore8bit", gpu="rtx-4090")  # the sidebar's first run
        # plotly loads a trace type's and the layout's validators on first use: bars, lines, shapes
        fig = charts.phase_bars(est.phases, est.overhead, est.peak_phase, est.fit().capacity_bytes)
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines+markers", fill="tozeroy")
        plotly.io.to_json(fig, validate=False)
        table.arrow_table([{"category": "parameters", "GiB": 1.5, "bytes": 1 << 30, "fits": True, "note": None}])
        inspect.stack()  # fills inspect's module-to-file cache now, not in the first run
    except Exception:  # a warm-up only: the pages import and compute all of it themselves anyway
        pass


def main() -> None:
    from streamlit.web.cli import main as streamlit_main

    preload()

    sys.exit(streamlit_main(prog_name="streamlit"))


if __name__ == "__main__":
    main()
