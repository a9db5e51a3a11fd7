"""Implementation records (memplan/impls.py): registry, options, CLI and JSON.

The records' numbers are checked against the real libraries in test_impls_libs.py;
here: what is registered, what the options do on the tiny model (counts by hand).
"""
import json

import pytest
from click.testing import CliRunner

import memplan
from memplan import METHODS
from memplan.cli.main import cli
from memplan.errors import MemplanError
from memplan.impls import IMPLS, get_impl

N = 49856  # tiny model parameters (tests/test_estimator.py)


def test_every_method_has_its_default_implementation():
    for name, m in METHODS.items():
        assert m.default_impl in IMPLS[name], name
        assert get_impl(name).name == m.default_impl


def test_defaults_are_what_users_get_on_a_gpu():
    assert get_impl("adamw").name == "torch-foreach"
    assert get_impl("galore").name == "galore-torch"
    assert get_impl("adafactor").name == "transformers"
    assert get_impl("lora").name == "peft"
    assert get_impl("sumo").name == "bundled"


def test_unknown_implementation_names_the_allowed_ones():
    with pytest.raises(MemplanError, match="torch-foreach, torch-fused, torch-forloop"):
        memplan.estimate("llama-60m", "adamw", impl="foreach")


def _step(tiny, method, **kw):
    return memplan.estimate(tiny, method, precision="bf16", batch_size=1, seq_len=8, rank=8, **kw).phases[
        "optimizer_step"]


def test_adamw_step_temporaries_by_implementation(tiny):
    assert _step(tiny, "adamw", impl="torch-foreach")["temporaries"] == N * 2  # one sqrt per parameter, all at once
    assert _step(tiny, "adamw", impl="torch-fused")["temporaries"] == 0
    # one tensor at a time: sqrt and quotient of down_proj (8192) while up_proj's denom (8192) is still referenced
    assert _step(tiny, "adamw", impl="torch-forloop")["temporaries"] == 3 * 8192 * 2


def test_sgd_momentum_zero_keeps_no_buffer(tiny):
    assert _step(tiny, "sgd")["optimizer_states"] == 0  # torch's default momentum is 0
    assert _step(tiny, "sgd", momentum=0.9)["optimizer_states"] == N * 2


def test_adafactor_first_moment_follows_beta1(tiny):
    no_first = _step(tiny, "adafactor")["optimizer_states"]  # transformers: beta1=None
    with_first = _step(tiny, "adafactor", beta1=0.9)["optimizer_states"]
    assert with_first - no_first == 4 * N  # an fp32 first moment of every parameter
    assert _step(tiny, "adafactor", impl="bundled", beta1="none")["optimizer_states"] < with_first


def test_bad_knobs_are_one_line_errors():
    for kw in (dict(momentum=1.5), dict(momentum="x"), dict(beta1=2.0)):
        with pytest.raises(MemplanError):
            memplan.estimate("llama-60m", "sgd", **kw)


def test_peft_adapters_are_fp32(tiny):
    est = memplan.estimate(tiny, "lora", rank=8, precision="bf16", batch_size=1, seq_len=8, impl="peft")
    bundled = memplan.estimate(tiny, "lora", rank=8, precision="bf16", batch_size=1, seq_len=8, impl="bundled")
    adapters = 8192  # r x (m + n) over the 7 adapted linears (test_estimator.py)
    assert est.phases["optimizer_step"]["parameters"] - bundled.phases["optimizer_step"]["parameters"] == 2 * adapters
    assert est.phases["optimizer_step"]["gradients"] == 4 * adapters


def test_cli_header_json_and_methods_name_the_implementation():
    r = CliRunner().invoke(cli, ["estimate", "--model", "llama-60m", "--method", "adamw", "--seq-len", "64"])
    assert r.exit_code == 0 and "impl torch-foreach" in r.output.splitlines()[0]
    r = CliRunner().invoke(cli, ["estimate", "--model", "llama-60m", "--method", "sgd", "--momentum", "0.9",
                                 "--impl", "torch", "--json"])
    d = json.loads(r.output)
    assert d["impl"] == "torch" and d["config"]["momentum"] == 0.9
    r = CliRunner().invoke(cli, ["estimate", "--model", "llama-60m", "--method", "adamw", "--impl", "nope"])
    assert r.exit_code == 2 and r.output.startswith("Error: Unknown implementation")
    r = CliRunner().invoke(cli, ["methods", "--json"])
    rows = {m["name"]: m for m in json.loads(r.output)}
    assert rows["adamw"]["default_impl"] == "torch-foreach"
    assert {i["name"] for i in rows["galore"]["impls"]} == {"galore-torch", "bundled"}
