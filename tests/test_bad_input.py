"""The bad-input corpus (tests/bad_input_cases.py) against the CLI, the library and the dashboard.

Every case must end in one line that says what was wrong (CLI: `Error: ...`, exit 2;
"nothing fits": exit 3), never a traceback. Time and memory per input are measured
by benchmarks/bad_input.py (benchmarks/results/bad_input.json), not here.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import memplan
from bad_input_cases import CLI, FILES, INJECTION_REPORT, UPLOADS, cli_args, upload, write_files
from memplan import MemplanError, limits
from memplan.cli.main import cli
from memplan.inventory import shape_groups
from memplan.profiles import ModelProfile, model_from_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_files(folder)
    return folder


@pytest.mark.parametrize("case", CLI, ids=[c.name for c in CLI])
def test_cli_answers_in_one_line(case, corpus):
    res = CliRunner().invoke(cli, cli_args(case, corpus))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == case.code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert "Traceback" not in res.output
    if case.code == 2:
        assert lines[-1].startswith("Error: ") and case.message in lines[-1], res.output
        assert len(lines) == 1, res.output  # click's usage errors too (cli/common.py one_line)
    else:
        assert case.message in res.output


def test_nothing_fits_exit_code_is_documented():
    for command in ("plan", "fit"):
        out = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
        assert "3 when" in out and "2 for bad input" in out, command


# ---------------------------------------------------------------- the library

LLAMA = json.loads(FILES["tie_string.json"])


def _profile(**kw):
    fields = dict(name="x", family="llama", model_type="llama", hidden_size=64, intermediate_size=128,
                  num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, vocab_size=100,
                  max_position_embeddings=128, tie_word_embeddings=False, hidden_act="silu")
    return ModelProfile(**{**fields, **kw})


LIBRARY = [
    ("profile of 10^12 layers", lambda: _profile(num_hidden_layers=10**12), "must be between 1 and 256"),
    ("profile with top-k above experts", lambda: _profile(model_type="mixtral", num_local_experts=2,
                                                          num_experts_per_tok=3), "num_experts_per_tok (3)"),
    ("config with a string boolean", lambda: model_from_config(LLAMA, "x", "cfg"), "must be true or false"),
    ("empty model name", lambda: memplan.load_model(""), "No model given"),
    ("empty method", lambda: memplan.estimate("llama-7b", ""), "Unknown method ''"),
    ("bool batch size", lambda: memplan.estimate("llama-7b", batch_size=True), "Batch size must be"),
    ("batch 10^21", lambda: memplan.estimate("llama-7b", batch_size=10**21), "must be between 1 and 1,048,576"),
    ("target typo", lambda: memplan.estimate("llama-7b", "lora", target_modules=["q_proj", "v_pro"]),
     "Target module 'v_pro'"),
    ("train_non_target with adamw", lambda: memplan.estimate("llama-7b", train_non_target=True),
     "apply to adapter methods"),
    ("compare: train_non_target, no adapter", lambda: memplan.compare("llama-7b", ["adamw"], train_non_target=True),
     "none of the methods chosen is one"),
    ("plan: negative headroom", lambda: memplan.plan("llama-7b", min_headroom=-1), "min_headroom must be"),
    ("plan: 0 GPUs", lambda: memplan.plan("llama-7b", gpu_counts=[0]), "must be between 1 and 4,096"),
    ("plan: layerwise on 2 GPUs", lambda: memplan.plan("llama-7b", layerwise=True, gpu_counts=[2]),
     "single-GPU only"),
    ("plan: no layouts", lambda: memplan.plan("llama-7b", layouts=[]), "No layouts given"),
    ("sweep of 9,801 cells", lambda: memplan.sweep("llama-7b", "adamw", batch_sizes=range(1, 100),
                                                   seq_lens=range(1, 100)), "at most 4,096"),
    ("local GPU index", lambda: memplan.estimate("llama-7b", gpu="local:x"), "Bad local GPU"),
    ("nested JSON", lambda: limits.parse_json(FILES["nested.json"], "f"), "nested too deeply"),
    ("JSON NaN", lambda: limits.parse_json(FILES["nan.json"], "f"), "NaN is not a number JSON allows"),
]


@pytest.mark.parametrize("name,call,message", LIBRARY, ids=[c[0] for c in LIBRARY])
def test_library_raises_one_memplan_error(name, call, message):
    with pytest.raises(MemplanError) as info:
        call()
    text = str(info.value)
    assert message in text and "\n" not in text


def test_parsing_cost_does_not_grow_with_depth():
    """One entry per distinct tensor of one block: 256 layers cost what 1 layer costs."""
    deep, shallow = _profile(num_hidden_layers=256), _profile(num_hidden_layers=1)
    assert len(shape_groups(deep, ())) == len(shape_groups(shallow, ()))
    per_block = sum(s.numel * n for s, n in shape_groups(_profile(num_hidden_layers=2), ())) \
        - sum(s.numel * n for s, n in shape_groups(shallow, ()))
    assert memplan.parameter_count(deep) == memplan.parameter_count(shallow) + 255 * per_block


# ---------------------------------------------------------------- the dashboard

st = pytest.importorskip("streamlit")
pytest.importorskip("plotly")
from streamlit.testing.v1 import AppTest  # noqa: E402

from memplan.app import report, state  # noqa: E402

DASHBOARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app", "dashboard.py")


@pytest.fixture
def at(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(report.REPORT_ENV, raising=False)
    app = AppTest.from_file(DASHBOARD, default_timeout=60)
    app.run()
    assert not app.exception
    return app


def _sidebar_widget(app, key):
    widgets = app.sidebar.get("selectbox") + app.sidebar.get("number_input") + app.sidebar.get("toggle")
    return next(w for w in widgets if w.key == key)


@pytest.mark.parametrize("up", UPLOADS, ids=[u.name for u in UPLOADS])
def test_dashboard_upload_is_one_message(at, up):
    upload(at, up, state.UPLOAD)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    shown = at.error[0].value
    assert up.message.replace("(", "\\(").replace(")", "\\)") in shown and "\n" not in shown
    assert "Traceback" not in shown and "site-packages" not in shown
    assert not re.search(r"(?<!\\)!\[|(?<!\\)\]\(", shown)  # no image or link can form


def _texts(app) -> list[str]:
    out = []
    for kind in ("markdown", "caption", "warning", "error", "info", "success"):
        out += [e.value for e in app.get(kind)]
    out += [m.proto.help for m in app.metric]
    return out


def test_report_labels_cannot_inject_images_or_links(at):
    at.switch_page("pages_validation.py").run()
    at.file_uploader(key="val_report").set_value(("shared.json", INJECTION_REPORT, "application/json"))
    at.run()
    assert not at.exception
    texts = "\n".join(_texts(at))
    assert "evil" in texts  # the labels are shown ...
    assert not re.search(r"(?<!\\)!\[|(?<!\\)\]\(|https://", texts)  # ... as text: no image, link or autolink
    specs = json.dumps([json.loads(c.proto.spec) for c in at.get("plotly_chart")])
    assert "<img" not in specs and "&lt;img" in specs  # plotly renders HTML in labels: escaped for it


def test_web_wording_names_the_sidebar_fields():
    msg = state.web_text("Rank 600 is larger than the smallest projected dimension (512) of llama-60m. "
                         "Use --rank between 1 and 512.")
    assert "--rank" not in msg and "'Rank r'" in msg


def test_sidebar_keeps_its_state_after_an_error(at, monkeypatch):
    """An error in the sidebar's upload stops the run before the other inputs are drawn, and
    Streamlit drops the state of widgets a run did not draw; the next run brings them back."""
    for key, val in (("in_method", "golore"), ("in_gpu", "a100-80gb"), ("in_rank", 256), ("in_batch_size", 4)):
        _sidebar_widget(at, key).set_value(val)
    at.run()
    _sidebar_widget(at, "in_model").set_value(state.UPLOAD)
    at.run()

    def broken(data, filename):
        raise RuntimeError("a bug in the reader")

    monkeypatch.setattr(state, "parse_config", broken)
    at.sidebar.file_uploader[0].set_value(("config.json", FILES["tie_string.json"], "application/json"))
    at.run()
    assert not at.exception and len(at.error) == 1 and "RuntimeError" in at.error[0].value
    monkeypatch.undo()
    _sidebar_widget(at, "in_model").set_value("llama-1b")
    at.run()
    assert not at.exception and not at.error
    kept = {k: _sidebar_widget(at, k).value for k in ("in_rank", "in_batch_size", "in_method", "in_gpu")}
    assert kept == {"in_rank": 256, "in_batch_size": 4, "in_method": "golore", "in_gpu": "a100-80gb"}


def test_no_error_details_when_served():
    from memplan.cli.app import streamlit_command

    cmd = streamlit_command(8501, "0.0.0.0", True)
    assert cmd[cmd.index("--client.showErrorDetails") + 1] == "none"
    toml = open(os.path.join(os.path.dirname(DASHBOARD), ".streamlit", "config.toml")).read()
    assert 'showErrorDetails = "none"' in toml


def test_memplan_app_stops_streamlit_on_sigterm(tmp_path):
    """`serve` (what `memplan app` runs) passes SIGTERM on: the server it started is gone too."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from memplan.cli.app import serve; "
                               f"sys.exit(serve([sys.executable, '-c', {child!r}], dict(__import__('os').environ)))"])
    try:
        for _ in range(300):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) == 0
        for _ in range(100):  # the child is reaped by the parent's wait
            try:
                os.kill(child_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the streamlit process outlived `memplan app`")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_block_order_is_the_model_order():
    """`before + block * layers + after` is the full inventory, tensor by tensor, for every built-in model."""
    import importlib

    inv = importlib.import_module("memplan.inventory")
    for name in memplan.model_names():
        p = memplan.load_model(name)
        targets = inv.resolve_targets(p, None)
        before, block, after = inv.block_order(p, targets)
        assert [s.name.replace(".0.", ".N.") for s in inv._inventory(p, targets)][:len(before) + len(block)] == \
            [s.name.replace(".0.", ".N.") for s in before + block], name
        full = [(s.shape, s.projected, s.role) for s in inv._inventory(p, targets)]
        assert full == [(s.shape, s.projected, s.role) for s in before + block * p.num_hidden_layers + after], name
