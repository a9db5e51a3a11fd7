"""The CLI through CliRunner: help everywhere, --json parses, bad input is one line."""
import json

import pytest
from click.testing import CliRunner

from memplan import estimate
from memplan.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def all_commands():
    return sorted(cli.list_commands(None))  # every command, the lazily loaded ones too


@pytest.mark.parametrize("name", all_commands())
def test_every_command_has_help(name):
    res = run(name, "--help")
    assert res.exit_code == 0, res.output
    assert "Example" in res.output or "example" in res.output


def test_group_help_lists_core_commands():
    res = run("--help")
    for name in ("estimate", "models", "gpus", "methods"):
        assert name in res.output


def test_estimate_table_and_verdict():
    res = run("estimate", "--model", "llama-7b", "--method", "golore", "--rank", "128", "--gpu", "rtx-4090")
    assert res.exit_code == 0, res.output
    est = estimate("llama-7b", "golore", rank=128, gpu="rtx-4090")
    assert f"in the {est.peak_phase} phase" in res.output
    assert "DOES NOT FIT" in res.output
    assert f"short by {-est.fit().headroom_bytes / 2**30:,.2f} GiB" in res.output
    for cat in ("parameters", "gradients", "optimizer_states", "projectors", "activations", "temporaries"):
        assert cat in res.output


def test_estimate_fits_verdict():
    res = run("estimate", "-m", "llama-7b", "--method", "galore8bit", "--layerwise", "--checkpointing",
              "--gpu", "rtx-4090")
    assert res.exit_code == 0, res.output
    assert "FITS on NVIDIA GeForce RTX 4090" in res.output
    assert "headroom" in res.output


def test_estimate_json_matches_library():
    res = run("estimate", "--model", "llama-1b", "--method", "sumo", "--rank", "256", "--batch-size", "4",
              "--seq-len", "512", "--precision", "mixed", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    lib = estimate("llama-1b", "sumo", rank=256, batch_size=4, seq_len=512, precision="mixed").to_dict()
    assert data == json.loads(json.dumps(lib))


@pytest.mark.parametrize("cmd", ["models", "gpus", "methods"])
def test_listing_json(cmd):
    res = run(cmd, "--json")
    assert res.exit_code == 0
    assert len(json.loads(res.output)) >= 13


def test_methods_lists_papers():
    res = run("methods")
    assert "GoLore" in res.output and "ICML 2025" in res.output and "gradnormlorp8bit" in res.output


@pytest.mark.parametrize("args,needle", [
    (["--model", "llama7b"], "Did you mean 'llama-7b'"),
    (["--model", "llama-7b", "--method", "galor"], "Did you mean 'galore'"),
    (["--model", "llama-7b", "--gpu", "rtx4090"], "Did you mean 'rtx-4090'"),
    (["--model", "llama-7b", "--method", "galore", "--rank", "0"], "Rank must be a positive integer"),
    (["--model", "llama-7b", "--method", "galore", "--rank", "-3"], "Rank must be a positive integer"),
    (["--model", "llama-60m", "--method", "galore", "--rank", "600"], "larger than the smallest projected"),
    (["--model", "llama-7b", "--batch-size", "0"], "Batch size must be a positive integer"),
    (["--model", "llama-7b", "--seq-len", "0"], "Sequence length must be a positive integer"),
    (["--model", "llama-7b", "--method", "galore", "--target-modules", "nonexistent"], "matches no 2-D weight"),
    (["--model", "tests/data/truncated.json"], "is not valid JSON"),
    (["--model", "tests/data/t5.json"], "unsupported model_type 't5'"),
    (["--model", "tests/data/missing_key.json"], "missing key 'intermediate_size'"),
    (["--model", "tests/data/negative.json"], "'hidden_size' must be between 1 and"),
    (["--model", "no/such/dir/config.json"], "No config.json at"),
])
def test_bad_input_is_one_line(args, needle):
    res = run("estimate", *args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert needle in lines[0]


def test_bad_gpu_file(tmp_path):
    bad = tmp_path / "gpus.toml"
    bad.write_text('[my-gpu]\nname = "X"\nmemory_mib = "lots"\nmemory_source = "me"\n')
    res = run("gpus", "--gpu-file", str(bad))
    assert res.exit_code == 2
    assert "Error:" in res.output and "memory_mib" in res.output


def test_user_gpu_file_adds_and_overrides(tmp_path):
    f = tmp_path / "gpus.json"
    f.write_text(json.dumps({"my-gpu": {"name": "My GPU", "memory_mib": 1000, "memory_source": "me"},
                             "rtx-4090": {"price_per_hour_usd": 0.1}}))
    res = run("gpus", "--gpu-file", str(f), "--json")
    data = {g["id"]: g for g in json.loads(res.output)}
    assert data["my-gpu"]["memory_mib"] == 1000
    assert data["rtx-4090"]["price_per_hour_usd"] == 0.1
    assert data["rtx-4090"]["memory_mib"] == 24564
    res = run("estimate", "--model", "llama-60m", "--gpu", "my-gpu", "--gpu-file", str(f), "--seq-len", "256")
    assert "DOES NOT FIT on My GPU" in res.output
