"""End to end: `streamlit run app/dashboard.py` on localhost, every page loaded in headless Chromium.

Chromium is driven over the DevTools protocol (with `websockets`, which Streamlit
already depends on): a page counts as rendered once its plotly charts are drawn
and no skeleton is left. The DOM must hold no exception and no error alert.
A full-page screenshot and the DOM of every page go to artifacts/ (gitignored).
Skipped when Debian's `chromium` is not installed (`apt-get install -y chromium`).

Run alone: pytest -m browser tests/test_app_browser.py
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")
websockets_sync = pytest.importorskip("websockets.sync.client")

from memplan.app import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
WIDTH = 1440

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")]

# (url path, screenshot name, plotly charts the page must draw)
PAGES = [
    ("", "estimate", 1),
    ("compare", "compare", 1),
    ("sweep", "sweep", 3),
    ("hardware", "hardware", 1),
    ("validation", "validation", 2),
    ("?model=llama-13b&method=adamw&gpu=a100-80gb&layerwise=false&checkpointing=false",
     "estimate_does_not_fit", 1),
    ("hardware?model=llama-13b&method=adamw&layerwise=false&checkpointing=false&batch_size=4",
     "hardware_multi_gpu", 1),
]
PROBE = """(() => {
  const q = s => document.querySelectorAll(s).length;
  return JSON.stringify({
    plots: q('.js-plotly-plot .main-svg') ? q('.js-plotly-plot') : 0,
    skeletons: q('[data-testid="stSkeleton"]'),
    exceptions: q('[data-testid="stException"]'),
    errors: q('[data-testid="stAlertContentError"]'),
    running: q('[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]'),
    height: Math.max(...[...document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"],'
                          + ' section.main, [data-testid="stSidebarContent"]')].map(e => e.scrollHeight), 0),
  });
})()"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


class DevTools:
    """The few DevTools protocol calls the test needs, on one page target."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def resize(self, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1,
                  mobile=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    if not (ROOT / report.DEFAULT_REPORT).is_file() and not env.get(report.REPORT_ENV):  # no report: a sample
        from test_app import sample_report

        path = tmp_path_factory.mktemp("report") / "validate_sample.json"
        path.write_text(json.dumps(sample_report()))
        env[report.REPORT_ENV] = str(path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "dashboard.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _get(f"http://127.0.0.1:{port}/_stcore/health") == "ok", 60, "streamlit's health check")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="memplan-chromium-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         f"--window-size={WIDTH},1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        port = _wait(lambda: port_file.is_file() and port_file.read_text().split("\n")[0], 30, "chromium")
        targets = json.loads(_wait(lambda: _get(f"http://127.0.0.1:{port}/json/list"), 30, "a page target"))
        page = next(t for t in targets if t["type"] == "page")
        with websockets_sync.connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            dt = DevTools(ws)
            dt.call("Page.enable")
            dt.resize(1000)
            yield dt
    finally:
        _stop(proc)
        shutil.rmtree(profile, ignore_errors=True)


def load(dt: DevTools, url: str, plots: int) -> dict:
    """Navigate, wait until the page is drawn (charts in, no skeleton, script done), return the probe."""
    dt.resize(1000)
    dt.call("Page.navigate", url=url)
    time.sleep(0.5)

    def drawn():
        state = json.loads(dt.eval(PROBE) or "{}")
        done = state and state["plots"] >= plots and not state["skeletons"] and not state["running"]
        return state if done or state.get("exceptions") else None

    _wait(drawn, 60, f"{url} to render {plots} chart(s)")
    time.sleep(1.0)  # plotly's resize to the container, fonts
    return json.loads(dt.eval(PROBE))


def capture(dt: DevTools, name: str, height: int) -> Path:
    """A screenshot of the whole app (the window grown to the content's height) and the DOM."""
    dt.resize(max(1000, min(height + 40, 6000)))
    time.sleep(1.0)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"dashboard_{name}.png"
    shot.write_bytes(base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"]))
    (ARTIFACTS / f"dashboard_{name}.html").write_text(dt.eval("document.documentElement.outerHTML") or "")
    return shot


@pytest.mark.parametrize("path,name,plots", PAGES, ids=[p[1] for p in PAGES])
def test_page_renders_in_chromium(server, browser, path, name, plots):
    state = load(browser, f"{server}/{path}", plots)
    shot = capture(browser, name, state["height"])
    assert state["exceptions"] == 0, f"{name}: an exception is shown (see {shot})"
    if name == "estimate_does_not_fit":  # the verdict is a red alert on purpose: it proves the probe sees one
        assert state["errors"] == 1, f"{name}: expected the does-not-fit verdict (see {shot})"
    else:
        assert state["errors"] == 0, f"{name}: an error alert is shown (see {shot})"
    assert state["plots"] >= plots, f"{name}: {state['plots']} plotly chart(s), expected {plots}"
    dom = (ARTIFACTS / f"dashboard_{name}.html").read_text()
    assert "Traceback" not in dom
    assert shot.stat().st_size > 20_000, f"{name}: the screenshot looks blank"
