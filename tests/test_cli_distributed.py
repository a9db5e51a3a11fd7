"""`memplan estimate --layout`, `memplan plan`'s engine column and `memplan validate --layout` refusals."""
import json

import pytest
from click.testing import CliRunner

from memplan.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_estimate_with_a_layout_is_the_worst_rank_per_gpu():
    r = run("estimate", "--model", "llama-7b", "--method", "adamw", "--layout", "fsdp2", "--num-gpus", "8",
            "--gpu", "a100-80gb")
    assert r.exit_code == 0, r.output
    assert "FSDP2, reshard after forward on 8 GPUs" in r.output and "worst rank" in r.output
    d = json.loads(run("estimate", "--model", "llama-7b", "--layout", "zero1", "--num-gpus", "4", "--json").output)
    assert d["engine"] == "DDP + ZeroRedundancyOptimizer" and d["num_gpus"] == 4 and 0 <= d["worst_rank"] < 4
    view = json.loads(run("estimate", "--model", "llama-7b", "--layout", "ddp", "--num-gpus", "2", "--bucket-view",
                          "--json").output)
    assert view["engine"] == "DDP, gradient_as_bucket_view"


@pytest.mark.parametrize("args,message", [
    (("--method", "galore", "--layout", "fsdp2", "--num-gpus", "2"), "'galore' under FSDP2 is not modeled"),
    (("--layout", "fsdp2", "--num-gpus", "2", "--precision", "mixed"), "mixed"),
    (("--num-gpus", "4",), "--num-gpus needs --layout"),
    (("--layout", "zero9", "--num-gpus", "4"), "Unknown layout 'zero9'"),
    (("--layout", "ddp", "--num-gpus", "2", "--layerwise"), "single-GPU only"),
])
def test_estimate_layout_errors_are_one_line(args, message):
    r = run("estimate", "--model", "llama-60m", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert r.output.strip().startswith("Error:") and len(r.output.strip().splitlines()) == 1


def test_plan_names_the_engine_per_row():
    r = run("plan", "--model", "llama-13b", "--method", "adamw", "--batch-size", "4", "--checkpointing",
            "--gpus", "rtx-4090,a100-80gb")
    assert r.exit_code == 0, r.output
    assert "FSDP2, keep parameters after forward" in r.output and "engine" in r.output


@pytest.mark.parametrize("args,message", [
    (("--layout", "ddp", "--num-gpus", "2", "--device", "fake"), "DDP's reducer cannot wrap fake tensors"),
    (("--method", "sumo", "--layout", "fsdp2", "--num-gpus", "2", "--device", "fake"), "not modeled"),
    (("--layout", "fsdp2", "--num-gpus", "1", "--device", "fake"), "at least 2 ranks"),
])
def test_validate_layout_refusals_are_one_line(args, message):
    pytest.importorskip("torch")
    r = run("validate", "--model", "llama-60m", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
