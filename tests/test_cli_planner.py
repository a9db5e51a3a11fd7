"""The planner commands through click's CliRunner: fit, compare, sweep, plan."""
import csv
import io
import json
import sys
import types

import pytest
from click.testing import CliRunner

from memplan.cli.main import cli
from memplan.cli.planner import COMMANDS


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_every_planner_command_is_registered_with_help_and_an_example(name):
    r = run(name, "--help")
    assert r.exit_code == 0
    assert "Example" in r.output and f"memplan {name} --model" in r.output


def test_fit_table():
    r = run("fit", "--model", "llama-7b", "--gpu", "rtx-4090", "--methods", "galore8bit,adamw")
    assert r.exit_code == 0, r.output
    assert "NVIDIA GeForce RTX 4090" in r.output and "max batch @2048" in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith(("galore8bit ", "adamw "))]
    assert len(lines) == 8  # 2 methods x per-layer on/off x checkpointing on/off


def test_fit_json_and_one_setting():
    r = run("fit", "--model", "llama-7b", "--gpu", "rtx-4090", "--methods", "galore8bit", "--layerwise",
            "--checkpointing", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["gpu"] == "rtx-4090" and data["units"] == "bytes"
    (row,) = data["rows"]
    assert row["layerwise"] and row["checkpointing"] and row["fits"]
    assert row["max_batch_size"] >= 1 and row["max_rank"] >= 128 and row["max_seq_len"] >= 2048


def test_fit_reports_and_checks_the_host_memory_of_an_offloaded_run():
    import memplan
    from memplan.units import GiB
    args = ["fit", "--model", "llama-7b", "--gpu", "rtx-4090", "--methods", "adamw", "--offload", "optimizer",
            "--layerwise", "--checkpointing"]
    host = memplan.estimate("llama-7b", "adamw", offload="optimizer", layerwise=True, checkpointing=True).host_bytes
    assert host > 40 * GiB  # fp32 moments and the pinned copies of 6.7B parameters
    rows = json.loads(run(*args, "--json").output)["rows"]
    assert [(r["host_bytes"], r["host_fits"], r["fits"]) for r in rows] == [(host, True, True)]
    short = run(*args, "--host-ram", str(host / GiB - 1))  # one GiB short
    assert short.exit_code == 3 and "(no)" in short.output and "host GiB" in short.output
    rows = json.loads(run(*args, "--host-ram", str(host / GiB + 1), "--json").output)["rows"]
    assert rows[0]["fits"] and rows[0]["host_fits"]
    assert "host GiB" not in run("fit", "--model", "llama-7b", "--gpu", "rtx-4090", "--methods", "adamw").output


def test_fit_gpu_local_without_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    r = CliRunner().invoke(cli, ["fit", "--model", "llama-7b", "--gpu", "local"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("Error: nvidia-ml-py is not installed")
    assert "Traceback" not in r.output


def test_fit_gpu_local_without_driver(monkeypatch):
    nv = types.ModuleType("pynvml")
    nv.NVMLError = type("NVMLError", (Exception,), {})

    def init():
        raise nv.NVMLError("NVML Shared Library Not Found")

    nv.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    r = CliRunner().invoke(cli, ["fit", "--model", "llama-7b", "--gpu", "local"])
    assert r.exit_code == 2
    assert "Error: No NVIDIA GPU or driver found (NVML: NVML Shared Library Not Found)" in r.output


def test_compare_table_and_json():
    r = run("compare", "--model", "llama-7b", "--rank", "128", "--gpu", "rtx-4090")
    assert r.exit_code == 0, r.output
    assert "saved %" in r.output and "headroom" in r.output
    rows = json.loads(run("compare", "--model", "llama-7b", "--methods", "adamw,galore,golore", "--json").output)
    assert [r["peak_allocated_bytes"] for r in rows] == sorted(r["peak_allocated_bytes"] for r in rows)
    adamw = [r for r in rows if r["method"] == "adamw"][0]
    assert adamw["saved_vs_adamw_bytes"] == 0


def test_sweep_grid_csv_json():
    args = ["sweep", "--model", "llama-1b", "--method", "galore", "--ranks", "64,128,256,512",
            "--batch-sizes", "1,4,16"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "rank \\ batch" in r.output
    assert sum(ln.split()[0] in ("64", "128", "256", "512") for ln in r.output.splitlines() if ln.strip()) == 4
    rows = list(csv.DictReader(io.StringIO(run(*args, "--csv").output)))
    assert len(rows) == 12 and {"rank", "batch_size", "seq_len", "peak_allocated_bytes"} <= set(rows[0])
    assert len(json.loads(run(*args, "--json").output)) == 12


def test_sweep_marks_cells_that_do_not_fit():
    r = run("sweep", "--model", "llama-1b", "--batch-sizes", "1,16", "--gpu", "rtx-4090")
    assert r.exit_code == 0, r.output
    assert " !" in r.output and "does not fit on NVIDIA GeForce RTX 4090" in r.output


@pytest.mark.parametrize("args,message", [
    (["--method", "adamw", "--ranks", "64"], "has no rank"),
    (["--batch-sizes", "1,x"], "comma-separated integers"),
    (["--batch-sizes", "0"], "must be between 1 and"),
    (["--csv", "--json"], "not both"),
])
def test_sweep_errors_are_one_line(args, message):
    r = CliRunner().invoke(cli, ["sweep", "--model", "llama-1b", *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_plan_table_and_json():
    r = run("plan", "--model", "llama-13b", "--method", "galore8bit", "--batch-size", "4", "--seq-len", "2048")
    assert r.exit_code == 0, r.output
    assert "h200" in r.output and "price date" in r.output and "batch 4 per GPU" in r.output
    rows = json.loads(run("plan", "--model", "llama-13b", "--method", "galore8bit", "--batch-size", "4",
                          "--checkpointing", "--json", "--top", "3").output)
    assert len(rows) == 3
    hourly = [x["price_per_hour_usd"] for x in rows]
    assert hourly == sorted(hourly)


def test_plan_nothing_fits():
    r = run("plan", "--model", "llama-13b", "--gpus", "rtx-3060-12gb", "--gpu-counts", "1")
    assert r.exit_code == 3 and r.output.startswith("Nothing fits")  # 3: nothing fits (documented in --help)


def test_plan_with_cpu_offload_shows_the_host_memory():
    import memplan
    from memplan.units import GiB

    host = memplan.estimate("llama-7b", "adamw", offload="optimizer").host_bytes
    r = run("plan", "--model", "llama-7b", "--method", "adamw", "--offload", "optimizer", "--top", "3")
    assert r.exit_code == 0, r.output
    assert f"Host memory: {host / GiB:.2f} GiB on every row" in r.output and "multi-GPU rows left out" in r.output
    table = r.output.split("engine:")[0]
    assert "one GPU" in table and "DDP" not in table and "FSDP2" not in table
    r = run("plan", "--model", "llama-7b", "--method", "adamw", "--offload", "optimizer", "--host-ram", "32")
    assert r.exit_code == 3 and r.output.startswith(f"Nothing fits: the offloaded optimizer (--offload optimizer) "
                                                    f"needs {host / GiB:.2f} GiB of host memory")
    r = run("plan", "--model", "llama-7b", "--method", "adamw", "--offload", "optimizer", "--gpu-counts", "2")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "one GPU only" in r.output
    r = run("estimate", "--model", "llama-7b", "--method", "adamw", "--offload", "optimizer", "--layout", "ddp",
            "--num-gpus", "2")
    assert r.exit_code == 2 and r.output.startswith("Error: CPU offload (--offload optimizer) is modeled on one GPU")


def test_plan_user_gpu_file_overrides_prices(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"rtx-4090": {"price_per_hour_usd": 0.05, "price_date": "2030-01"}}))
    rows = json.loads(run("plan", "--model", "llama-1b", "--gpu-file", str(f), "--json").output)
    assert rows[0]["gpu"] == "rtx-4090" and rows[0]["price_per_hour_usd"] == pytest.approx(0.05)
    assert rows[0]["price_date"] == "2030-01"


def test_plan_bad_gpu_file_names_the_field(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[rtx-4090]\nprice_per_hour_usd = "cheap"\n')
    r = CliRunner().invoke(cli, ["plan", "--model", "llama-1b", "--gpu-file", str(f)])
    assert r.exit_code == 2
    assert "price_per_hour_usd" in r.output and "must be a number" in r.output


def test_unknown_gpu_and_method_are_one_line_errors():
    r = CliRunner().invoke(cli, ["fit", "--model", "llama-7b", "--gpu", "rtx4090"])
    assert r.exit_code == 2 and "Unknown GPU 'rtx4090'" in r.output and "rtx-4090" in r.output
    r = CliRunner().invoke(cli, ["compare", "--model", "llama-7b", "--methods", "galor"])
    assert r.exit_code == 2 and "Unknown method 'galor'" in r.output


def test_bf16_on_a_gpu_without_bf16_is_noted():
    r = run("fit", "--model", "llama-60m", "--gpu", "t4", "--methods", "adamw")
    assert "no native bf16 on t4" in r.output
    r = run("fit", "--model", "llama-60m", "--gpu", "t4", "--methods", "adamw", "--precision", "mixed")
    assert "bf16 on" not in r.output


def test_plan_min_headroom():
    r = run("plan", "--model", "llama-7b", "--method", "galore8bit", "--layerwise", "--checkpointing",
            "--min-headroom", "8", "--json")
    rows = json.loads(r.output)
    assert rows and all(x["headroom_bytes"] >= 8 * 2**30 for x in rows)
    r = run("plan", "--model", "llama-7b", "--method", "galore8bit", "--layerwise", "--checkpointing",
            "--min-headroom", "8")
    assert "at least 8.00 GiB free" in r.output and "rtx-4090" not in r.output
    r = CliRunner().invoke(cli, ["plan", "--model", "llama-7b", "--min-headroom", "-1"])
    assert r.exit_code == 2 and "--min-headroom" in r.output
