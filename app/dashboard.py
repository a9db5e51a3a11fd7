"""The memplan dashboard: `memplan app`, or `streamlit run app/dashboard.py`.

The sidebar (app/state.py) holds the training run; each page (app/pages_*.py)
reads it and shows one view: the estimate, methods side by side, sweeps over rank,
batch and sequence, hardware sizing, and the validation report. Every number
comes from the memplan library; the pages only lay it out.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from memplan.app import state

HERE = Path(__file__).parent

PAGES = [
    st.Page(HERE / "pages_estimate.py", title="Estimate", icon=":material/memory:", url_path="estimate",
            default=True),
    st.Page(HERE / "pages_compare.py", title="Compare methods", icon=":material/bar_chart:", url_path="compare"),
    st.Page(HERE / "pages_sweep.py", title="Sweeps", icon=":material/show_chart:", url_path="sweep"),
    st.Page(HERE / "pages_hardware.py", title="Hardware", icon=":material/developer_board:", url_path="hardware"),
    st.Page(HERE / "pages_validation.py", title="Validation", icon=":material/fact_check:", url_path="validation"),
]

# served to a network: an uncaught error shows no traceback (and no server paths); errors are
# also caught where they start (state.shown, the upload readers) and said in one line
st.set_option("client.showErrorDetails", "none")
st.set_page_config(page_title="memplan: memory planner", page_icon=":material/memory:", layout="wide")
page = st.navigation(PAGES, position="top")
try:
    state.sidebar()
    page.run()
except Exception as e:  # noqa: BLE001 (st.stop and reruns are BaseExceptions and pass through)
    st.error(state.web_text(f"memplan could not show this page ({type(e).__name__}: {e})."))
