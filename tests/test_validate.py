"""The estimator against measured steps (issue 4's targets), on a 2-block model with
llama-60m's vocabulary and GQA, under FakeTensorMode (fake == real is tested in
test_measure.py), plus real CPU points and the CLI."""
import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")

from memplan.measure.grid import ALL_METHODS, summarize  # noqa: E402
from memplan.measure.validate import EXACT, ValidateConfig, validate  # noqa: E402
from memplan.profiles import load_model  # noqa: E402

TINY = dataclasses.replace(load_model("llama-60m"), name="tiny-gqa", hidden_size=64, intermediate_size=176,
                           num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, vocab_size=32000)

POINTS = [(m, lw, ck) for m in ALL_METHODS for lw, ck in ((False, False), (True, True))]
POINTS += [("galore", False, True), ("galore", True, False), ("lora", True, False)]


def check(v):
    # The 2-block model is held to exact categories, the peak within 3% and the peak phase; the
    # 1% gate on the peak and its activation / transient split (validate.py) is for the grid's
    # real model sizes: at this size the split at the start of backward differs by ~8% of the peak
    for c in EXACT:
        assert v.error["categories"][c]["bytes"] == 0, (c, v.estimate["categories"][c], v.measured["categories"][c])
    assert abs(v.error["peak"]["relative"]) <= 0.03
    assert v.error["peak_phase_match"]


@pytest.mark.parametrize("method,layerwise,checkpointing", POINTS)
def test_estimate_matches_the_fake_step(method, layerwise, checkpointing):
    v = validate(ValidateConfig(model=TINY, method=method, rank=16, batch_size=2, seq_len=32, device="fake",
                                layerwise=layerwise, checkpointing=checkpointing))
    check(v)


@pytest.mark.parametrize("method,layerwise,checkpointing", [("adamw", False, False), ("galore", True, False),
                                                             ("lora", False, False), ("adamw", False, True)])
def test_estimate_matches_the_fake_step_in_mixed_precision(method, layerwise, checkpointing):
    v = validate(ValidateConfig(model=TINY, method=method, rank=16, precision="mixed", batch_size=2, seq_len=32,
                                device="fake", layerwise=layerwise, checkpointing=checkpointing))
    check(v)


@pytest.mark.parametrize("method", ["adamw", "galore", "lora"])
def test_estimate_matches_the_real_cpu_step(method):
    v = validate(ValidateConfig(model=TINY, method=method, rank=16, precision="fp32", batch_size=2, seq_len=32,
                                device="cpu"))
    check(v)


def test_validation_json_shape_and_summary():
    v = validate(ValidateConfig(model=TINY, method="golore", rank=16, batch_size=1, seq_len=16, device="fake"))
    d = json.loads(json.dumps(v.to_dict()))
    assert {"estimate", "measured", "error", "config", "passed"} <= set(d)
    for side in ("estimate", "measured"):
        assert set(d[side]["phases"]) == {"forward", "backward", "optimizer_step", "refresh_step"}
        assert set(d[side]["categories"]) >= set(EXACT) | {"activations", "temporaries"}
    assert d["config"]["model"] == "tiny-gqa"
    rows = summarize([d])
    assert rows[0]["method"] == "golore" and rows[0]["points"] == 1


def test_measured_refresh_includes_the_svd():
    v = validate(ValidateConfig(model=TINY, method="galore", rank=16, batch_size=1, seq_len=16, device="fake"))
    m = v.measured["phases"]
    assert m["refresh_step"]["total"] >= m["optimizer_step"]["total"]


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="device"):
        ValidateConfig(device="tpu")


# ---------------------------------------------------------------- CLI
def _cli():
    from click.testing import CliRunner

    from memplan.cli.validate import validate as cmd
    return CliRunner(), cmd


def test_cli_json_output():
    runner, cmd = _cli()
    r = runner.invoke(cmd, ["--model", "llama-60m", "--method", "adamw", "--batch-size", "1", "--seq-len", "8",
                            "--device", "fake", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert set(d) >= {"estimate", "measured", "error"}
    assert d["error"]["categories"]["parameters"]["bytes"] == 0


def test_cli_errors_are_one_line():
    runner, cmd = _cli()
    r = runner.invoke(cmd, ["--model", "llama-60m", "--device", "cuda"] if not torch.cuda.is_available()
                      else ["--model", "no-such-model", "--device", "fake"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("Error: ")
    r = runner.invoke(cmd, ["--model", "no-such-model", "--device", "fake"])
    assert r.exit_code == 2 and "Error: " in r.output and "Traceback" not in r.output


def test_cli_help_has_an_example():
    runner, cmd = _cli()
    r = runner.invoke(cmd, ["--help"])
    assert r.exit_code == 0 and "memplan validate --grid small" in r.output


def test_validate_is_in_the_main_cli():
    from click.testing import CliRunner

    from memplan.cli.main import cli
    r = CliRunner().invoke(cli, ["validate", "--help"])
    assert r.exit_code == 0 and "--device" in r.output


MIXED_ADAPTERS = [("lora", "bundled", 0.0, False), ("lora", "peft", 0.0, False), ("lora", "peft", 0.05, False),
                  ("lowrank", None, 0.0, False), ("relora", None, 0.0, False), ("lora", "peft", 0.0, True)]


@pytest.mark.parametrize("method,impl,lora_dropout,layerwise", MIXED_ADAPTERS)
def test_autocast_adapters_at_full_gate(method, impl, lora_dropout, layerwise):
    """Under autocast (mixed) adapter matmuls save bf16 copies of their inputs and factors, the
    frozen base linears none of theirs (activations._adapters_autocast); held to the grid's 1% gate
    on llama-60m, the size where these terms weigh (the 2-block model's 3% let a 2-7% miss through)."""
    v = validate(ValidateConfig(model="llama-60m", method=method, rank=32, precision="mixed", batch_size=2,
                                seq_len=128, device="fake", impl=impl, lora_dropout=lora_dropout, layerwise=layerwise))
    assert v.passed, v.failures


LAYERWISE_MOMENTS = [("gpt2", "adamw", False), ("roberta-base", "adamw", True), ("roberta-base", "galore", False),
                     ("mixtral-8x7b", "adamw", True)]


@pytest.mark.parametrize("model,method,checkpointing", LAYERWISE_MOMENTS)
def test_per_layer_update_moments_at_full_gate(model, method, checkpointing):
    """The per-layer update's backward moments beyond the head's step (phases.compose): a tied
    embedding whose gradient is complete only at the end of backward (GPT-2, RoBERTa), and a
    mixture of experts' 3-D weight larger than the head (Mixtral), at the grid's 1% gate."""
    v = validate(ValidateConfig(model=model, method=method, rank=64, batch_size=1, seq_len=128, device="fake",
                                layerwise=True, checkpointing=checkpointing))
    assert v.passed, v.failures


def test_methods_without_a_bundled_optimizer_run_their_library_or_say_why_not():
    """APOLLO, Fira and QLoRA have no bundled optimizer: validate runs their libraries by default.
    What it cannot build (INT8 weights) is refused in one line that names the fix and the test that
    checks those rules instead; QLoRA's quantization reads values, so it has no fake-tensor run."""
    assert ValidateConfig(method="apollo").impl == "apollo-torch"
    assert ValidateConfig(method="fira").impl == "fira"
    assert ValidateConfig(method="qlora").impl == "peft-bitsandbytes"
    assert ValidateConfig(method="galore").impl is None  # the bundled optimizer
    assert ValidateConfig(method="qgalore", impl="q-galore-torch-bf16").impl == "q-galore-torch-bf16"
    for method, impl, fix in (("qgalore", None, "--impl q-galore-torch-bf16"),
                              ("apollo", "q-apollo", "--impl apollo-torch")):
        with pytest.raises(ValueError, match=f"cannot run {method}") as e:
            ValidateConfig(method=method, impl=impl)
        assert fix in str(e.value) and "tests/test_recent_methods.py" in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no fake-tensor run.*--device cpu"):
        ValidateConfig(method="qlora", device="fake")


SMALL_VOCAB = dataclasses.replace(load_model("llama-60m"), name="small-vocab", hidden_size=512, intermediate_size=2048,
                                  num_attention_heads=8, num_key_value_heads=8, num_hidden_layers=4, vocab_size=1000)


@pytest.mark.parametrize("method,checkpointing", [("adamw", True), ("sgd", True), ("galore", True), ("relora", True),
                                                  ("lowrank", True), ("sgd", False), ("lowrank", False)])
def test_backward_peaks_inside_a_block_when_the_logits_are_small(method, checkpointing):
    """With a 1,000-word vocabulary the loss no longer sets the backward's peak: a block's own backward
    does, in its MLP (three t x i gradients beside what it saved), in the last block (every activation
    alive) or in the first (every gradient but its own; recomputed first under checkpointing). Before
    those moments were modelled, 5 of these 7 points were off by -3.3% to -10.6% at the peak."""
    v = validate(ValidateConfig(model=SMALL_VOCAB, method=method, rank=64, precision="bf16", batch_size=2,
                                seq_len=256, checkpointing=checkpointing, device="fake"))
    for c in EXACT:
        assert v.error["categories"][c]["bytes"] == 0, c
    assert abs(v.error["peak"]["relative"]) <= 0.002, v.error["peak"]
    assert v.error["peak_phase_match"]


SVD_HEAVY = dataclasses.replace(load_model("llama-1b"), name="svd-heavy", num_hidden_layers=2)


@pytest.mark.parametrize("method,checkpointing", [("galore8bit", True), ("galore8bit", False), ("galore", True)])
def test_per_layer_refresh_runs_in_a_block_weights_step(method, checkpointing):
    """With the per-layer update a refresh (GaLore's SVD) runs in the step of a projected weight, in the
    last block's backward: that weight's gradient alive, the head's already stepped and freed. Putting
    the SVD on top of the head's step instead was +7% at the refresh step of this 2-block llama-1b."""
    v = validate(ValidateConfig(model=SVD_HEAVY, method=method, rank=64, batch_size=1, seq_len=64, device="fake",
                                layerwise=True, checkpointing=checkpointing))
    e, m = v.estimate["phases"]["refresh_step"]["total"], v.measured["phases"]["refresh_step"]["total"]
    assert abs(e - m) <= 0.001 * m, (e, m)
    assert abs(v.error["peak"]["relative"]) <= 0.001 and v.error["peak_phase_match"]


@pytest.mark.parametrize("method,impl,layerwise", [("adamw", None, False), ("galore", None, False),
                                                   ("lora", "peft", False), ("golore", None, True)])
def test_autocast_keeps_the_weight_copies_through_a_checkpointed_forward(method, impl, layerwise):
    """Mixed precision with checkpointing: autocast caches each trainable weight's bf16 copy until the
    forward returns, though the checkpointed blocks save nothing. Without that cache the forward was
    7-26% low on llama-1b and opt-1.3b, and the per-layer update's peak, in forward, 6.6% low."""
    v = validate(ValidateConfig(model="llama-60m", method=method, impl=impl, rank=64, precision="mixed", batch_size=2,
                                seq_len=128, device="fake", layerwise=layerwise, checkpointing=True))
    e, m = v.estimate["phases"]["forward"]["total"], v.measured["phases"]["forward"]["total"]
    assert abs(e - m) <= 0.005 * m, (e, m)
    assert abs(v.error["peak"]["relative"]) <= 0.005 and v.error["peak_phase_match"]
