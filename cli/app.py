"""`memplan app`: start the Streamlit dashboard (needs the app extra: streamlit, plotly)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import click

from memplan.cli.common import CONTEXT_SETTINGS, CLIError

NEEDS_EXTRA = "The dashboard needs the app extra: pip install 'memplan[app]'"


def dashboard_path() -> Path:
    """app/dashboard.py inside the installed package (memplan.app)."""
    spec = importlib.util.find_spec("memplan.app")
    if spec is None or not spec.submodule_search_locations:
        raise CLIError("The dashboard files (memplan.app) are not installed; reinstall memplan.")
    return Path(list(spec.submodule_search_locations)[0]) / "dashboard.py"


def streamlit_command(port: int, address: str, headless: bool) -> list[str]:
    # memplan.app.serve: Streamlit's own command line, with the pages' libraries loaded at start
    return [sys.executable, "-m", "memplan.app.serve", "run", str(dashboard_path()),
            "--server.port", str(port), "--server.address", address,
            "--server.headless", "true" if headless else "false", "--browser.gatherUsageStats", "false",
            "--client.showErrorDetails", "none", "--client.toolbarMode", "viewer"]


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=8501, show_default=True,
              help="Port to serve the dashboard on.")
@click.option("--address", default="localhost", show_default=True,
              help="Address to listen on (0.0.0.0 to reach it from other machines).")
@click.option("--headless/--no-headless", default=False, show_default=True,
              help="--headless: do not open a browser tab (servers, containers).")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Validation report to show on the Validation page "
                   "[default: benchmarks/results/validate_small.json].")
def app(port, address, headless, report):
    """Open the memplan dashboard in your browser.

    Pick a model (or upload a config.json), a method, rank, precision, batch,
    sequence length and GPU in the sidebar; the pages show the estimate by
    category and phase with the fit verdict, methods side by side, sweeps over
    rank / batch / sequence, which GPUs fit (cheapest first), and a validation
    report. Stop it with Ctrl+C.

    \b
    Example:
      memplan app                      # opens http://localhost:8501
      memplan app --port 8502 --headless
    Same as: streamlit run app/dashboard.py
    """
    if importlib.util.find_spec("streamlit") is None or importlib.util.find_spec("plotly") is None:
        raise CLIError(NEEDS_EXTRA)
    env = dict(os.environ)
    if report is not None:
        env["MEMPLAN_VALIDATION_REPORT"] = str(Path(report).resolve())
    click.echo(f"memplan dashboard on http://{address}:{port} (Ctrl+C to stop)", err=True)
    sys.exit(serve(streamlit_command(port, address, headless), env))


def serve(command: list[str], env: dict) -> int:
    """Run the streamlit server; Ctrl+C or SIGTERM (a service manager, `kill`) stops it too."""
    import signal
    import subprocess  # here, not at the top: every CLI start imports this module

    proc = subprocess.Popen(command, env=env)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


COMMANDS = [app]
