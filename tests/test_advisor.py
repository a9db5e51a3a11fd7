"""The advisor against the planner's exact answers: each advised change fits, each one
left out does not, and each advised size is the largest that fits."""
import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from memplan.advisor import TIGHT_SHARE, advise
from memplan.cli.main import cli
from memplan.estimator import capacity_bytes, estimate_config
from memplan.parallel import shard
from memplan.planner import fits
from memplan.profiles import GPUProfile, load_gpu

RUNS = [  # runs that do not fit an RTX 4090
    dict(model="llama-7b", method="golore", rank=128),
    dict(model="llama-7b", method="adamw"),
    dict(model="llama-7b", method="galore8bit", rank=128, batch_size=8, layerwise=True),
    dict(model="llama-1b", method="galore", rank=256, batch_size=16, seq_len=2048),
]


def _required(run) -> int:
    """The device total per GPU, recomputed from scratch (not through the advisor)."""
    est = estimate_config(run.config)
    return (est if run.layout == "single" else shard(est, run.layout, run.num_gpus)).device_total_bytes


def _advice(spec, gpu="rtx-4090"):
    spec = dict(spec)
    return advise(spec.pop("model"), gpu, spec.pop("method"), **spec)


@pytest.mark.parametrize("spec", RUNS, ids=lambda s: f"{s['model']}-{s['method']}")
def test_advised_changes_fit_and_the_others_do_not(spec):
    a = _advice(spec)
    gpu = load_gpu("rtx-4090")
    cap = capacity_bytes(gpu)
    assert a.status == "does not fit" and a.required_bytes > cap
    assert a.single or a.pairs
    for o in a.single + a.pairs:
        assert _required(o.run) == o.required_bytes <= cap, o.label
        assert fits(o.run.config, gpu, o.run.layout, o.run.num_gpus)
    for o in a.not_enough:
        assert _required(o.run) > cap, o.label
        assert not fits(o.run.config, gpu, o.run.layout, o.run.num_gpus)
    # one option per change tried: nothing is both advised and not enough
    assert not {o.label for o in a.single} & {o.label for o in a.not_enough}


@pytest.mark.parametrize("spec", RUNS, ids=lambda s: f"{s['model']}-{s['method']}")
def test_advised_sizes_are_the_planners_exact_bisection(spec):
    a = _advice(spec)
    gpu = load_gpu("rtx-4090")
    for o in a.single + a.pairs:
        size = o.changes[-1]
        if size.key in ("batch_size", "seq_len", "rank"):
            n = getattr(o.run.config, size.key)
            assert size.label.endswith(f" {n}")
            assert fits(o.run.config, gpu)
            assert not fits(replace(o.run.config, **{size.key: n + 1}), gpu), o.label  # one more does not fit


def test_single_changes_are_ranked_by_tier_then_headroom():
    a = _advice(RUNS[3])  # llama-1b galore at batch 16: smaller batch, checkpointing, shorter sequence
    keys = [(max(c.tier for c in o.changes), -o.headroom_bytes) for o in a.single]
    assert keys == sorted(keys)
    assert len(a.single) >= 2


def test_pairs_appear_when_no_cheap_single_change_fits():
    a = _advice(RUNS[0])  # llama-7b golore on a 4090: only another method or more GPUs fit alone
    # (more GPUs: GoLore under FSDP2 is not modeled, and DDP / zero1 keep every weight and gradient on each
    # 4090, so no single change may fit at all)
    assert all(o.changes[0].tier >= 2 for o in a.single)
    # another method or more GPUs (Q-GaLore's 25.3 GiB device total no longer fits since the
    # fragmentation rule fitted to allocator replays: 0.28 x its 12.55 GiB of gradients)
    assert all("GPU" in o.label or o.label.startswith("--method") for o in a.single)
    best = a.pairs[0]
    assert {c.key for c in best.changes} == {"checkpointing", "layerwise"}  # GaLore's 7B-on-24GB recipe
    assert best.headroom_bytes > 0


def test_a_run_that_fits_needs_no_change_and_a_tight_one_gets_headroom():
    roomy = _advice(dict(model="llama-60m", method="adamw"))
    assert roomy.status == "fits" and not roomy.single and not roomy.pairs
    # a GPU just large enough: the run fits with less than TIGHT_SHARE free
    need = estimate_config(roomy.run.config).device_total_bytes
    mib = -(-need // (1 << 20)) + 1
    gpu = GPUProfile(id="tight", name="Tight GPU", memory_mib=mib, usable_mib=mib, memory_source="test")
    tight = advise("llama-60m", gpu, "adamw")
    assert tight.status == "tight"
    assert tight.goal_bytes == int(TIGHT_SHARE * capacity_bytes(gpu))
    for o in tight.single:
        assert o.headroom_bytes >= tight.goal_bytes


def test_every_change_names_its_cost_and_source():
    a = _advice(RUNS[1])
    for o in a.single + a.pairs + a.not_enough:
        for c in o.changes:
            assert c.cost and c.source and 0 <= c.tier <= 3


def test_cli_advise_prints_the_changes_and_json():
    r = CliRunner().invoke(cli, ["advise", "--model", "llama-7b", "--method", "golore", "--rank", "128",
                                 "--gpu", "rtx-4090"])
    assert r.exit_code == 0, r.output
    assert "Does not fit" in r.output and "--checkpointing + --layerwise" in r.output and "[1]" in r.output
    r = CliRunner().invoke(cli, ["advise", "--model", "llama-7b", "--method", "adamw", "--gpu", "rtx-4090", "--json"])
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["status"] == "does not fit" and data["single"] and data["units"] == "bytes"


@pytest.mark.parametrize("args", [["--model", "llama-7b"], ["--model", "llama-7b", "--gpu", "rtx-9999"],
                                  ["--model", "llama-7b", "--gpu", "rtx-4090", "--min-headroom", "-1"]])
def test_cli_advise_bad_input_is_one_line_error(args):
    r = CliRunner().invoke(cli, ["advise", *args])
    assert r.exit_code == 2 and r.output.startswith("Error: ") and "Traceback" not in r.output


def test_offload_and_fused_loss_are_offered_with_the_host_figure():
    a = _advice(dict(model="llama-7b", method="adamw"))
    labels = {o.label for o in a.single + a.pairs + a.not_enough}
    assert any(lab.startswith("--offload optimizer (host ") for lab in labels)
    best = a.pairs[0]
    assert {c.key for c in best.changes} == {"checkpointing", "offload"}  # 7B AdamW on a 4090: offload + recompute
    assert best.run.config.offload == "optimizer+gradients" and best.headroom_bytes > 0
    assert fits(best.run.config, load_gpu("rtx-4090"))
    b = _advice(dict(model="llama3-8b", method="galore", rank=128, batch_size=2))
    assert "--loss fused-chunked" in {o.label for o in b.single + b.not_enough}
