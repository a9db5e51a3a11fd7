"""The click-free start-up path of `memplan estimate` (cli/fast.py): what it prints is what the
click command prints, and whatever it does not follow exactly goes to click."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from memplan.cli import fast, options
from memplan.cli.main import cli, estimate

TINY = "tests/data/tiny_llama.json"

TAKEN = [
    ["--model", "llama-7b", "--method", "adamw", "--json"],
    ["--model", "llama-7b", "--method", "golore", "--rank", "128", "--gpu", "rtx-4090"],
    ["-m", "llama-1b", "--method", "galore8bit", "--layerwise", "-b", "4", "-s", "512", "-g", "rtx-4090"],
    ["--model=llama-7b", "--method=lora", "--rank=16", "--precision", "mixed", "--checkpointing", "--json"],
    ["--model", "llama-7b", "--method", "adafactor", "--beta1", "none", "--gpu", "a100-80gb"],
    ["--model", "llama-7b", "--method", "adafactor", "--beta1", "0.9", "--dropout", "0.1"],
    ["--model", "llama-7b", "--method", "adamw", "--layout", "fsdp2", "--num-gpus", "8", "--gpu", "a100-80gb"],
    ["--model", "llama-7b", "--method", "sgd", "--momentum", "0.9", "--json"],
    ["--model", "llama-7b", "--method", "adamw", "--offload", "optimizer", "--host-ram", "64", "--gpu", "rtx-4090"],
    ["--model", "llama-7b", "--method", "lora", "--rank", "16", "--lora-dropout", "0.05", "--attn", "eager"],
    ["--model", "llama-7b", "--method", "qlora", "--rank", "16", "--weights", "nf4", "--loss", "fused-chunked",
     "--loss-chunk", "1024"],
    ["--model", "llama-7b", "--no-layerwise", "--freeze-non-target", "--method", "lora"],
    ["--model", "llama-7b", "--json", "--json", "--layout", "ddp", "--num-gpus", "4", "--bucket-view"],
    ["--model", TINY, "--method", "galore", "--rank", "16", "--update-gap", "50", "--target-modules", "q_proj,v_proj"],
    ["--model", "llama-7b", "--method", "adamw", "--impl", "torch-fused", "--batch-size", "2", "--batch-size", "3"],
    ["--model", "llama-7b", "--rank", "-5"],  # a negative number is a value (adamw has no rank)
]

LEFT_TO_CLICK = [
    ["--help"], ["-h"], [], ["--method", "adamw"],  # no --model
    ["--model", "llama-7b", "-b4"], ["--model", "llama-7b", "--batch-size", "x"], ["--model", "llama-7b", "extra"],
    ["--model", "llama-7b", "--precision", "fp8"], ["--model", "llama-7b", "--beta1", "foo"],
    ["--model", "llama-7b", "--json=1"], ["--model", "llama-7b", "--gpu-file", "x.toml"], ["--model", "llama-7b", "--"],
    ["--model", "llama-7b", "--rank"], ["--model", "--json"], ["--model", "llama-7b", "--modle", "x"],
]

ERRORS = [  # parsed here, refused by the estimator: click's path reports them
    ["--model", "llama-7x"], ["--model", "llama-7b", "--method", "adamx"], ["--model", "llama-7b", "--method", "golore", "--rank", "-5"],
    ["--model", "llama-7b", "--method", "golore", "--rank", "100000"], ["--model", "llama-7b", "--num-gpus", "8"],
    ["--model", "llama-7b", "--gpu", "nope"],
]


@pytest.mark.parametrize("words", TAKEN, ids=lambda w: " ".join(w)[:60])
def test_fast_path_prints_what_click_prints(words):
    out = fast.fast_estimate(["estimate", *words])
    assert out is not None
    res = CliRunner().invoke(cli, ["estimate", *words])
    assert res.exit_code == 0, res.output
    assert res.output == out + "\n"


@pytest.mark.parametrize("words", LEFT_TO_CLICK, ids=lambda w: " ".join(w)[:60] or "nothing")
def test_what_the_fast_path_does_not_follow_goes_to_click(words):
    assert fast.parse(words) is None


@pytest.mark.parametrize("words", ERRORS, ids=lambda w: " ".join(w)[:60])
def test_estimator_errors_go_to_click(words):
    assert fast.parse(words) is not None
    assert fast.fast_estimate(["estimate", *words]) is None
    res = CliRunner().invoke(cli, ["estimate", *words])
    assert res.exit_code == 2 and res.output.startswith("Error: ")


def test_other_commands_go_to_click():
    assert fast.fast_estimate(["models"]) is None
    assert fast.fast_estimate(["--version"]) is None


def test_click_command_is_built_from_the_same_table():
    table = {o.name: o for o in options.ESTIMATE + options.LAYOUT + [options.JSON]}
    params = {p.name: p for p in estimate.params if p.name != "help"}
    assert params.keys() == table.keys()
    for name, p in params.items():
        o = table[name]
        assert set(p.opts + p.secondary_opts) == set(fast._switches()) & set(p.opts + p.secondary_opts)
        assert p.required == o.required
        if not o.required:
            assert p.default == o.default, name
    # every switch the fast path knows is one of click's, and the reverse
    assert set(fast._switches()) == {s for p in params.values() for s in p.opts + p.secondary_opts}


def test_console_script_runs_the_fast_path():
    """`memplan estimate` as installed (the entry point is memplan_start.py:main): no click, and
    `inspect` (imported by dataclasses) never run."""
    code = ("import sys; from memplan_start import main; sys.argv = ['memplan', 'estimate', '--model', "
            "'llama-7b', '--json']; main(); assert 'click' not in sys.modules, 'click imported'; "
            "assert type(sys.modules['inspect']).__name__ == '_Deferred' and 'ast' not in sys.modules, 'inspect run'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert '"peak_phase"' in res.stdout
    code = ("import sys; from memplan_start import main; sys.argv = ['memplan', 'estimate', '--model', 'nope']; "
            "main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("Error: Unknown model 'nope'")


def test_a_deferred_module_runs_whole_on_first_use():
    """What reads `inspect` after the console script deferred it (click's path, a traceback) gets
    the whole module: `from inspect import ...`, attributes, and the module is a plain one after."""
    code = ("import sys, memplan_start; memplan_start.defer('inspect'); import inspect, dataclasses; "
            "assert type(inspect).__name__ == '_Deferred'; from inspect import signature; "
            "assert str(signature(lambda a, b=2: 0)) == '(a, b=2)'; assert type(inspect).__name__ == 'module'; "
            "assert inspect.isfunction(len) is False and sys.modules['inspect'] is inspect; "
            "import click.testing, memplan.cli.main as m; r = click.testing.CliRunner().invoke(m.cli, ['--help']); "
            "assert r.exit_code == 0 and 'estimate' in r.output, r.output")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
