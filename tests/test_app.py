"""The dashboard driven with Streamlit's AppTest: every page, inputs changed, numbers
checked against the library, bad uploads answered with a message (never a traceback)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest  # noqa: E402

import memplan  # noqa: E402
import memplan.advisor  # noqa: E402
from memplan import CATEGORIES  # noqa: E402
from memplan.app import charts, report  # noqa: E402
from memplan.app.pages_estimate import verdict_text  # noqa: E402
from memplan.app.table import csv_text  # noqa: E402
from memplan.estimator import capacity_bytes  # noqa: E402
from memplan.units import GiB  # noqa: E402

DASHBOARD = Path(__file__).resolve().parents[1] / "app" / "dashboard.py"
DATA = Path(__file__).parent / "data"
EXACT = ("parameters", "gradients", "optimizer_states", "projectors")


def sample_report(methods=("adamw", "galore", "golore", "galore8bit")) -> list[dict]:
    """Points shaped like `memplan.measure.validate.Validation.to_dict()`: the estimate from the library,
    a 'measured' side equal on the exact categories and 2% above on activations and temporaries."""
    points = []
    for m in methods:
        est = memplan.estimate("llama-60m", m, rank=32, batch_size=4, seq_len=256)
        cats = {**est.phases[est.peak_phase], "overhead": est.overhead}
        meas = {c: (v if c in EXACT else int(v * 1.02)) for c, v in cats.items() if c != "overhead"}
        meas_peak = sum(meas.values())
        err = {c: {"bytes": cats[c] - meas[c], "relative": (cats[c] - meas[c]) / meas[c] if meas[c] else 0.0}
               for c in meas}
        peak_rel = (est.peak_bytes - meas_peak) / meas_peak
        points.append({
            "config": {"model": "llama-60m", "method": m, "rank": 32, "precision": "bf16", "batch_size": 4,
                       "seq_len": 256, "layerwise": False, "checkpointing": False, "device": "cpu"},
            "estimate": {"peak_phase": est.peak_phase, "peak_bytes": est.peak_bytes, "categories": cats,
                         "device_total_bytes": est.device_total_bytes},
            "measured": {"peak_phase": est.peak_phase, "peak_bytes": meas_peak, "categories": meas},
            "error": {"categories": err, "peak": {"bytes": est.peak_bytes - meas_peak, "relative": peak_rel},
                      "peak_phase_match": True},
            "passed": abs(peak_rel) <= 0.03, "failures": [], "seconds": 1.0})
    return points


def broken_point() -> dict:
    """A point whose run raised, as memplan.measure.grid.run_grid records it."""
    return {"config": {"model": "llama-60m", "method": "sumo", "rank": 32, "batch_size": 4, "seq_len": 256},
            "passed": False, "failures": ["RuntimeError: out of memory"], "error": None, "estimate": None,
            "measured": None, "seconds": 0}


@pytest.fixture
def at(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no default validation report here
    monkeypatch.delenv(report.REPORT_ENV, raising=False)
    app = AppTest.from_file(str(DASHBOARD), default_timeout=60)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def run(app: AppTest) -> AppTest:
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def set_run(app: AppTest, **values) -> AppTest:
    for key, val in values.items():
        widget = app.sidebar.get("selectbox") + app.sidebar.get("number_input") + app.sidebar.get("radio") \
            + app.sidebar.get("toggle")
        next(w for w in widget if w.key == f"in_{key}").set_value(val)
    return run(app)


def frame(app: AppTest, column: str):
    """The first table shown that has `column`."""
    return next(d.value for d in app.dataframe if column in d.value.columns)


def plotly_specs(app: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in app.get("plotly_chart")]


def check_estimate_page(app: AppTest, est, gpu: str) -> None:
    fit = est.fit(gpu)
    shown = metrics(app)
    assert shown["Peak memory (device total)"] == f"{est.device_total_bytes / GiB:.2f} GiB"
    assert shown["Peak phase"] == charts.PHASE_LABELS[est.peak_phase]
    assert f"{fit.capacity_bytes / GiB:.2f} GiB" in shown.values()
    assert shown["Headroom" if fit.fits else "Shortfall"] == f"{abs(fit.headroom_bytes) / GiB:.2f} GiB"
    verdicts = [e.value for e in (app.success if fit.fits else app.error)]
    assert any(v.startswith(verdict_text(fit, fit.gpu.name)) for v in verdicts)
    table = frame(app, "category")
    for cat in CATEGORIES:
        row = table[table["category"] == charts.CATEGORY_LABELS[cat].split(" (")[0]].iloc[0]
        assert row[f"{charts.PHASE_LABELS[est.peak_phase]} (GiB)"] == pytest.approx(est.breakdown[cat] / GiB)


# ---------------------------------------------------------------- estimate page

def test_default_run_matches_the_library(at):
    d = memplan.app.state.DEFAULTS
    est = memplan.estimate(d["model"], d["method"], rank=d["rank"], precision=d["precision"],
                           batch_size=d["batch_size"], seq_len=d["seq_len"], layerwise=d["layerwise"],
                           checkpointing=d["checkpointing"])
    check_estimate_page(at, est, d["gpu"])
    spec = plotly_specs(at)[0]
    assert spec["layout"]["yaxis"]["title"]["text"] == "Memory (GiB)"
    capacity = capacity_bytes(memplan.load_gpu(d["gpu"])) / GiB
    assert any(s.get("y0") == pytest.approx(capacity) for s in spec["layout"]["shapes"])


def test_changing_every_input_updates_the_numbers(at):
    set_run(at, model="llama-1b", method="golore", rank=256, precision="mixed", batch_size=4, seq_len=1024,
            layerwise=False, checkpointing=False, gpu="a100-40gb")
    est = memplan.estimate("llama-1b", "golore", rank=256, precision="mixed", batch_size=4, seq_len=1024)
    check_estimate_page(at, est, "a100-40gb")


def test_implementation_selector_changes_the_estimate(at):
    set_run(at, model="llama-1b", method="adamw", layerwise=False, checkpointing=False, seq_len=512)
    set_run(at, impl_adamw="torch-fused")
    est = memplan.estimate("llama-1b", "adamw", impl="torch-fused", seq_len=512)
    check_estimate_page(at, est, memplan.app.state.DEFAULTS["gpu"])
    assert any(c.value.startswith("torch-fused (") for c in at.caption)
    assert est.device_total_bytes < memplan.estimate("llama-1b", "adamw", seq_len=512).device_total_bytes


def test_does_not_fit_verdict_and_shortfall(at):
    set_run(at, model="llama-13b", method="adamw", layerwise=False, checkpointing=False, gpu="a100-80gb")
    est = memplan.estimate("llama-13b", "adamw")
    assert not est.fit("a100-80gb").fits
    check_estimate_page(at, est, "a100-80gb")
    assert any(e.value.startswith("Does not fit on") for e in at.error)


def test_verdict_box_shows_the_advisors_changes(at):
    set_run(at, model="llama-7b", method="golore", rank=128, layerwise=False, checkpointing=False, gpu="rtx-4090")
    advice = memplan.advisor.advise("llama-7b", "rtx-4090", "golore", rank=128)
    box = next(e.value for e in at.error if e.value.startswith("Does not fit on"))
    assert "memplan advise" in box
    for o in (advice.single + advice.pairs)[:4]:
        assert f"`{o.label}`: {o.headroom_bytes / GiB:+.2f} GiB headroom" in box


def test_rank_is_disabled_for_methods_without_one(at):
    set_run(at, method="adamw")
    assert next(w for w in at.sidebar.number_input if w.key == "in_rank").disabled


def test_a_rank_too_large_is_a_message(at):
    set_run(at, model="llama-60m", method="galore", rank=4096)
    assert len(at.error) == 1 and "Rank 4096 is larger" in at.error[0].value


def test_query_parameters_set_the_first_run():
    app = AppTest.from_file(str(DASHBOARD), default_timeout=60)
    app.query_params.update({"model": "llama-350m", "method": "sumo", "rank": "64", "gpu": "l4",
                             "layerwise": "false", "checkpointing": "false", "batch_size": "nonsense"})
    run(app)
    est = memplan.estimate("llama-350m", "sumo", rank=64)
    check_estimate_page(app, est, "l4")


def test_uploaded_config_is_estimated(at):
    set_run(at, model=memplan.app.state.UPLOAD)
    assert any("Upload a Hugging Face config.json" in i.value for i in at.info)
    at.sidebar.file_uploader[0].set_value(("config.json", (DATA / "tiny_llama.json").read_bytes(), "application/json"))
    run(at)
    d = memplan.app.state.DEFAULTS
    est = memplan.estimate(str(DATA / "tiny_llama.json"), d["method"], rank=16, batch_size=d["batch_size"],
                           seq_len=d["seq_len"], layerwise=True, checkpointing=True)
    set_run(at, rank=16)
    check_estimate_page(at, est, d["gpu"])
    for page, charts_shown in (("pages_compare.py", 1), ("pages_sweep.py", 3), ("pages_hardware.py", 1)):
        run(at.switch_page(page))
        assert not at.error and len(at.get("plotly_chart")) == charts_shown, page


@pytest.mark.parametrize("name,content,message", [
    ("config.json", b"\x89PNG\r\n\x1a\n\x00\x00 random bytes \xff\xfe", "is not UTF-8 text"),
    ("truncated.json", (DATA / "truncated.json").read_bytes(), "is not valid JSON"),
    ("t5.json", (DATA / "t5.json").read_bytes(), "unsupported model_type"),
    ("missing_key.json", (DATA / "missing_key.json").read_bytes(), "missing key"),
    ("list.json", b"[1, 2, 3]", "expected a JSON object"),
])
def test_bad_config_upload_is_one_message(at, name, content, message):
    set_run(at, model=memplan.app.state.UPLOAD)
    at.sidebar.file_uploader[0].set_value((name, content, "application/json"))
    run(at)
    assert len(at.error) == 1
    assert message in at.error[0].value and "\n" not in at.error[0].value
    assert not at.get("plotly_chart")


# ---------------------------------------------------------------- compare page

def rows_adamw_peak(rows) -> int:
    return next(r.estimate.peak_bytes for r in rows if r.method == "adamw")


def test_compare_page_matches_memplan_compare(at):
    set_run(at, model="llama-1b", layerwise=False, checkpointing=False)
    run(at.switch_page("pages_compare.py"))
    rows = memplan.compare("llama-1b", gpu="rtx-4090", rank=128)
    table = at.dataframe[0].value
    assert list(table["method"]) == [r.method for r in rows]  # sorted, smallest first
    for (_, shown), r in zip(table.iterrows(), rows):
        # one peak for "peak" and the saving: the allocated peak (the device total has its own column)
        assert shown["peak (GiB)"] == pytest.approx(r.estimate.peak_bytes / GiB)
        assert shown["device total (GiB)"] == pytest.approx(r.estimate.device_total_bytes / GiB)
        assert shown["saving vs AdamW (GiB)"] == pytest.approx((rows_adamw_peak(rows) - r.estimate.peak_bytes) / GiB)
        assert shown["saving vs AdamW (%)"] == pytest.approx(100 * r.saved_fraction)
        assert shown["fits"] == ("yes" if r.estimate.fit().fits else "no")
    bars = plotly_specs(at)[0]["data"]
    assert [t["name"] for t in bars] == [charts.CATEGORY_LABELS[c] for c in CATEGORIES]
    at.multiselect(key="cmp_methods").set_value(["adamw", "galore8bit"])
    run(at)
    assert sorted(at.dataframe[0].value["method"]) == ["adamw", "galore8bit"]


def test_same_category_colours_on_every_page(at):
    seen = {}
    for page in ("pages_estimate.py", "pages_compare.py", "pages_sweep.py"):
        run(at.switch_page(page))
        for spec in plotly_specs(at):
            for t in spec["data"]:
                color = t.get("marker", {}).get("color") if t.get("type") == "bar" else t.get("fillcolor")
                if t.get("name") in charts.CATEGORY_LABELS.values() and isinstance(color, str):
                    seen.setdefault(t["name"], set()).add(color)
    assert set(seen) == set(charts.CATEGORY_LABELS.values())
    assert all(colors == {charts.CATEGORY_COLORS[c]} for c, colors in
               ((c, seen[charts.CATEGORY_LABELS[c]]) for c in CATEGORIES))


# ---------------------------------------------------------------- sweep page

def test_sweep_page_marks_the_planners_largest_rank(at):
    set_run(at, model="llama-1b", method="galore", layerwise=False, checkpointing=False, gpu="rtx-4090")
    run(at.switch_page("pages_sweep.py"))
    specs = plotly_specs(at)
    assert len(specs) == 3
    for m in ("galore", "golore", "sumo"):
        r = memplan.max_rank("llama-1b", "rtx-4090", m, batch_size=1, seq_len=2048)
        assert f"**{m}** {r}" in " ".join(c.value for c in at.caption)
        star = next(t for t in specs[0]["data"] if t.get("name") == f"{m}: largest rank that fits")
        assert star["x"] == [r]
    best = memplan.max_batch_size("llama-1b", "rtx-4090", "galore", rank=128, seq_len=2048)
    assert any(f"Largest batch size that fits RTX 4090 at sequence length 2048: **{best}**" in c.value
               for c in at.caption)
    gpus = next(w for w in at.multiselect if w.label == "GPU capacities")
    gpus.set_value(["h100-80gb"])
    run(at)
    cap = capacity_bytes(memplan.load_gpu("h100-80gb")) / GiB
    assert [s["y0"] for s in plotly_specs(at)[0]["layout"]["shapes"]] == [pytest.approx(cap)]


# ---------------------------------------------------------------- hardware page

def test_hardware_page_lists_the_planners_options_cheapest_first(at):
    set_run(at, model="llama-13b", method="adamw", layerwise=False, checkpointing=False)
    run(at.switch_page("pages_hardware.py"))
    plan = memplan.plan("llama-13b", "adamw", rank=128)
    table = at.dataframe[0].value
    assert len(table) == min(len(plan), 15)
    for (_, shown), p in zip(table.iterrows(), plan):
        assert shown["needed per GPU (GiB)"] == pytest.approx(p.per_gpu_bytes / GiB)
        assert shown["max batch per GPU"] == p.max_batch_size
    assert at.success[0].value.startswith(f"Cheapest fit: {plan[0].num_gpus} × ")
    at.get("button_group")[0].set_value([1])
    run(at)
    assert all(t.startswith("1 × ") for t in at.dataframe[0].value["GPUs"])


def test_hardware_page_with_cpu_offload_lists_single_gpus(at):
    set_run(at, model="llama-7b", method="adamw", layerwise=False, checkpointing=True)
    set_run(at, offload="optimizer")
    run(at.switch_page("pages_hardware.py"))
    plan = memplan.plan("llama-7b", "adamw", checkpointing=True, offload="optimizer")
    assert plan and all(p.num_gpus == 1 for p in plan)
    assert all(t.startswith("1 × ") for t in at.dataframe[0].value["GPUs"])
    assert any("CPU offload is modeled on one GPU only" in c.value for c in at.caption)


def test_hardware_page_when_nothing_fits(at):
    set_run(at, model="opt-13b", method="adamw", precision="fp32", batch_size=64, layerwise=False,
            checkpointing=False)
    run(at.switch_page("pages_hardware.py"))
    assert memplan.plan("opt-13b", "adamw", precision="fp32", batch_size=64) == []
    assert len(at.error) == 1 and at.error[0].value.startswith("No GPU and count here fits")


# ---------------------------------------------------------------- validation page

def test_validation_without_a_report_says_how_to_make_one(at):
    run(at.switch_page("pages_validation.py"))
    assert any("memplan validate --grid small" in i.value for i in at.info)
    assert not at.error


def test_validation_report_upload_shows_estimated_against_measured(at):
    run(at.switch_page("pages_validation.py"))
    points = sample_report()
    doc = {"grid": "small", "results": [*points, broken_point()]}
    at.file_uploader(key="val_report").set_value(("report.json", json.dumps(doc).encode(), "application/json"))
    run(at)
    assert metrics(at)["Points"] == str(len(points))
    assert "1 point(s) could not be measured" in at.expander[0].label
    assert "out of memory" in at.expander[0].markdown[0].value
    table = at.dataframe[0].value
    for (_, shown), p in zip(table.iterrows(), points):
        assert shown["estimated peak (GiB)"] == pytest.approx(p["estimate"]["peak_bytes"] / GiB)
        assert shown["measured peak (GiB)"] == pytest.approx(p["measured"]["peak_bytes"] / GiB)
        assert shown["peak error (%)"] == pytest.approx(100 * p["error"]["peak"]["relative"])
    strip, bars = plotly_specs(at)
    assert strip["data"][0]["y"] == pytest.approx([100 * p["error"]["peak"]["relative"] for p in points])
    assert [t["name"] for t in bars["data"]] == ["Estimated", "Measured (hatched)"]
    at.multiselect(key="val_methods").set_value(["galore"])
    run(at)
    assert list(at.dataframe[0].value["point"]) == ["llama-60m galore r32 b4 s256 bf16 cpu"]


def test_validation_default_report_from_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "validate.json"
    path.write_text(json.dumps({"grid": "small", "results": sample_report(("adamw",))}))
    monkeypatch.setenv(report.REPORT_ENV, str(path))
    app = AppTest.from_file(str(DASHBOARD), default_timeout=60)
    run(app.run().switch_page("pages_validation.py"))
    assert metrics(app)["Points"] == "1"


@pytest.mark.parametrize("content,message", [
    (b"\x00\x01\x02 not json", "is not valid JSON"),
    (b'{"points": [{"estimate": {}}]}', "expected an object with 'estimate' and 'measured'"),
    (b'[{"estimate": {"parameters": "many"}, "measured": {"parameters": 1}}]', "must be a number of bytes"),
    (b"[]", "has no points"),
])
def test_bad_report_upload_is_one_message(at, content, message):
    run(at.switch_page("pages_validation.py"))
    at.file_uploader(key="val_report").set_value(("bad.json", content, "application/json"))
    run(at)
    assert len(at.error) == 1 and message in at.error[0].value


MARKER = Path(__import__("tempfile").gettempdir()) / f"memplan-app-test-pwned-{__import__('os').getpid()}"


class _RunsCode:
    """Unpickling this would create MARKER: a stand-in for a malicious snapshot."""

    def __reduce__(self):
        import os

        return (os.mkdir, (str(MARKER),))


def _snapshot_page(at):
    if report.snapshot_support() is not None:
        pytest.skip(report.snapshot_support())
    run(at.switch_page("pages_validation.py"))
    return next(u for u in at.file_uploader if u.key == "val_snapshot")


def test_snapshot_upload_shows_its_analysis_replay_and_segment_map(at):
    """A real snapshot (cut from a public one, tests/data/snapshots): the page shows the same
    numbers as memplan.snapshot_report and the replay, and draws the segment map."""
    from memplan.snapshot import load
    from memplan.snapshot_report import analyze

    path = Path(__file__).parent / "data" / "snapshots" / "silmont2000_full.pickle.gz"
    a = analyze(load(path))
    _snapshot_page(at).set_value(("snap.pickle.gz", path.read_bytes(), "application/octet-stream"))
    run(at)
    shown = metrics(at)
    assert shown["Peak allocated (trace)"] == f"{a['peak_allocated_bytes'] / 2**30:.2f} GiB"
    assert shown["Reserved at the dump"] == f"{a['reserved_bytes'] / 2**30:.2f} GiB" == "3.52 GiB"
    assert any("addresses 36/36 matched" in m.value for m in at.markdown)
    assert any("Segment map" in str(c.proto.spec) for c in at.get("plotly_chart"))


@pytest.mark.parametrize("content,message", [
    (b"\x80\x04random bytes, not a pickle", "Could not read"),
    (__import__("pickle").dumps(_RunsCode()), "Refusing to load the snapshot"),
    (__import__("pickle").dumps([1, 2, 3]), "Not a CUDA memory snapshot"),
])
def test_bad_snapshot_upload_is_one_message_and_runs_nothing(at, content, message):
    _snapshot_page(at).set_value(("snap.pickle", content, "application/octet-stream"))
    run(at)
    assert len(at.error) == 1 and message in at.error[0].value and "\n" not in at.error[0].value
    assert not MARKER.exists()


# ---------------------------------------------------------------- CSV and the command

def test_csv_downloads_hold_the_librarys_bytes():
    from memplan.app import pages_compare, pages_estimate

    est = memplan.estimate("llama-1b", "galore", rank=64)
    csv = pages_estimate.csv_table(est)
    peak = {r["category"]: r["bytes"] for r in csv if r["phase"] == est.peak_phase}
    assert {c: peak[c] for c in CATEGORIES} == est.breakdown
    rows = [{"method": r.method, "breakdown": r.estimate.breakdown, "fits": True, "peak_phase": "backward",
             "device_total_bytes": r.estimate.device_total_bytes, "headroom_bytes": 0,
             "peak_bytes": r.estimate.peak_bytes,
             "saved_vs_adamw_bytes": r.saved_bytes} for r in memplan.compare("llama-1b", ["adamw", "golore"])]
    out = pages_compare.csv_table(rows)
    assert [r["device_total_bytes"] for r in out] == [r["device_total_bytes"] for r in rows]
    assert [r["peak_allocated_bytes"] for r in out] == [r["peak_bytes"] for r in rows]
    text = csv_text(out).splitlines()  # the download: a header, then one line of exact bytes per method
    assert text[0].split(",")[:4] == ["method", "fits", "peak_allocated_bytes", "device_total_bytes"]
    assert [line.split(",")[3] for line in text[1:]] == [str(r["device_total_bytes"]) for r in rows]


NO_PANDAS = r"""
import json, sys
from pathlib import Path
from streamlit.testing.v1 import AppTest
root, report, snapshot = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
app = AppTest.from_file(str(root / "app" / "dashboard.py"), default_timeout=120)
app.run()
tables = {}
for page in ("pages_estimate.py", "pages_compare.py", "pages_sweep.py", "pages_hardware.py", "pages_validation.py"):
    app.switch_page(page).run()
    assert not app.exception, [e.value for e in app.exception]
    tables[page] = len(app.dataframe)
app.file_uploader(key="val_report").set_value(("report.json", report.read_bytes(), "application/json"))
app.file_uploader(key="val_snapshot").set_value((snapshot.name, snapshot.read_bytes(), "application/octet-stream"))
app.run()
assert not app.exception, [e.value for e in app.exception]
tables["validation, report and snapshot"] = len(app.dataframe)
print(json.dumps({"pandas": "pandas" in sys.modules, "tables": tables}))
"""


def test_no_page_imports_pandas(tmp_path):
    """Every page, its tables and downloads included, runs without pandas (0.25 s of a first run):
    app/table.py builds the Arrow tables from buffers. In a fresh process: this one has pandas."""
    import subprocess
    import sys

    rep = tmp_path / "report.json"
    rep.write_text(json.dumps({"grid": "small", "results": sample_report(("adamw", "galore"))}))
    snap = DATA / "snapshots" / "silmont2000_full.pickle.gz"
    dist = DASHBOARD.parents[1] / "benchmarks" / "results" / "validate_dist.json"  # the multi-GPU tables
    if dist.is_file():
        (tmp_path / "benchmarks" / "results").mkdir(parents=True)
        (tmp_path / "benchmarks" / "results" / dist.name).write_bytes(dist.read_bytes())
    out = subprocess.run([sys.executable, "-c", NO_PANDAS, str(DASHBOARD.parents[1]), str(rep), str(snap)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tables"]["pages_estimate.py"] == 2 and result["tables"]["pages_compare.py"] == 1
    assert result["tables"]["pages_hardware.py"] == 1
    # the summary, the snapshot's categories and blocks (and the multi-GPU report's two tables)
    assert result["tables"]["validation, report and snapshot"] == 3 + 2 * dist.is_file()
    assert result["pandas"] is False


def test_memplan_app_help_and_missing_extra(monkeypatch):
    from click.testing import CliRunner

    from memplan.cli import app as app_cmd
    from memplan.cli.main import cli

    result = CliRunner().invoke(cli, ["app", "--help"])
    assert result.exit_code == 0 and "streamlit run app/dashboard.py" in result.output
    assert app_cmd.dashboard_path().is_file()
    cmd = app_cmd.streamlit_command(8600, "localhost", True)
    assert cmd[1:4] == ["-m", "memplan.app.serve", "run"] and "8600" in cmd
    monkeypatch.setattr(app_cmd.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(cli, ["app"])
    assert result.exit_code == 2 and app_cmd.NEEDS_EXTRA in result.output


def test_estimate_page_lists_the_per_layer_and_checkpointing_options(at):
    set_run(at, model="llama-7b", method="galore8bit", layerwise=False, checkpointing=False)
    from memplan.planner import fit_report

    rows = fit_report("llama-7b", "rtx-4090", ["galore8bit"], rank=128, batch_size=1, seq_len=2048)
    table = frame(at, "per-layer update")
    assert len(table) == 4
    for (_, shown), r in zip(table.iterrows(), rows):
        assert shown["fits"] == ("yes" if r.fits else "no")
        assert shown["peak (GiB)"] == pytest.approx(r.required_bytes / GiB)
        assert shown["max batch (seq 2048)"] == r.max_batch_size and shown["max rank"] == r.max_rank
        assert (shown[""] == "◀ this run") == (not r.layerwise and not r.checkpointing)


def test_rank_csv_marks_the_largest_rank():
    from memplan.app import pages_sweep

    out = pages_sweep.rank_csv({"galore": [(64, 10), (128, 20)]}, {"galore": (100, 15)})
    assert [r["rank"] for r in out] == [64, 128, 100]
    assert [r["largest_rank_that_fits"] for r in out] == [False, False, True]
    assert csv_text(out) == ("method,rank,device_total_bytes,largest_rank_that_fits\n"
                             "galore,64,10,False\ngalore,128,20,False\ngalore,100,15,True\n")


def test_offload_weights_and_loss_reach_the_estimate(at):
    set_run(at, model="llama-7b", method="adamw", layerwise=False, checkpointing=True, gpu="rtx-4090")
    set_run(at, offload="optimizer+gradients", loss="fused-chunked")  # enabled once the method allows it
    est = memplan.estimate("llama-7b", "adamw", checkpointing=True, offload="optimizer+gradients",
                           loss="fused-chunked")
    assert metrics(at)["Peak memory (device total)"] == f"{est.device_total_bytes / GiB:.2f} GiB"
    assert any(f"{est.host_bytes / GiB:.2f} GiB" in e.value for e in at.info)
    set_run(at, offload="none", loss="standard")
    set_run(at, method="qlora")
    set_run(at, rank=16)  # the rank box is enabled once the method has a rank
    est = memplan.estimate("llama-7b", "qlora", rank=16, checkpointing=True)
    assert est.config.weights is None and "nf4" in est.to_dict()["config"]["weights"]
    assert metrics(at)["Peak memory (device total)"] == f"{est.device_total_bytes / GiB:.2f} GiB"
