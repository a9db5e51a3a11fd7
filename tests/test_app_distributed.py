"""The Validation page shows the multi-GPU report (benchmarks/results/validate_dist.json) beside the
single-GPU one: every point of each section, with its verdict."""
import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "benchmarks" / "results" / "validate_dist.json"


def test_validation_page_shows_the_distributed_grid(monkeypatch, tmp_path):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "validate_dist.json").write_text(REPORT.read_text())
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(ROOT / "app" / "dashboard.py"), default_timeout=60)
    at.run()
    at.switch_page("pages_validation.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("against PyTorch's distributed engine" in m.value for m in at.markdown)
    data = json.loads(REPORT.read_text())
    tables = [t.value for t in at.dataframe]
    sizes = sorted(len(t) for t in tables)
    for part in ("issue", "grid"):
        assert len(data[part]["points"]) in sizes
    grid = next(t for t in tables if len(t) == len(data["grid"]["points"]))
    assert list(grid["passed"]) == ["yes" if p["passed"] else "no" for p in data["grid"]["points"]]
