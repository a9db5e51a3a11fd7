"""Multi-GPU layouts: what each one divides, and what it adds (memplan/parallel.py)."""
import pytest

import memplan
from memplan.errors import MemplanError
from memplan.estimator import CUDA_CONTEXT_BYTES
from memplan.reserve import DEFAULT_WORKSPACE_BYTES, fragmentation_bytes
from memplan.parallel import (COMM_BUFFER_BYTES, LAYOUTS, UNITS_IN_FLIGHT, ShardedEstimate, largest_unit_numel,
                              resolve_layout, shard, shard_phase, sharding_units)
from memplan.profiles import load_model

SHARDED = ("zero1", "zero2", "zero3")


def ceil_div(a, b):
    return -(-a // b)


@pytest.fixture(scope="module")
def est7b():
    return memplan.estimate("llama-7b", "galore", rank=128, batch_size=2, seq_len=1024)


def test_units_of_the_tiny_model(tiny):
    # one block: 2 norms (64) + q 4096 + k 2048 + v 2048 + o 4096 + gate/up/down 3 x 8192
    units = sharding_units(load_model(tiny), memplan.DEFAULT_TARGET_MODULES["llama"])
    assert units == {"model.embed_tokens": 6400, "model.layers.0": 2 * 64 + 4096 + 2 * 2048 + 4096 + 3 * 8192,
                     "model.norm": 64, "lm_head": 6400}
    assert largest_unit_numel(load_model(tiny)) == 36992


def test_largest_unit_of_llama_7b_is_a_block():
    # 4 x 4096^2 attention + 3 x 4096 x 11008 MLP + 2 norms
    assert largest_unit_numel(load_model("llama-7b")) == 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero1_divides_states_and_projectors_only(est7b, n):
    s = shard(est7b, "zero1", n)
    for phase, cats in est7b.phases.items():
        got = s.phases[phase]
        assert got["optimizer_states"] == ceil_div(cats["optimizer_states"], n)
        assert got["projectors"] == ceil_div(cats["projectors"], n)
        for c in ("parameters", "gradients", "activations", "temporaries"):
            assert got[c] == cats[c]


@pytest.mark.parametrize("layout", SHARDED)
def test_foreach_step_buffer_is_sharded_with_the_states(layout):
    # torch's foreach AdamW steps each rank's shard: its sqrt buffer is as sharded as the moments
    est = memplan.estimate("llama-7b", "adamw", impl="torch-foreach", seq_len=512)
    s = shard(est, layout, 4)
    assert s.phases["optimizer_step"]["temporaries"] == ceil_div(est.phases["optimizer_step"]["temporaries"], 4)
    assert s.phases["forward"]["temporaries"] == est.phases["forward"]["temporaries"]
    loop = shard(memplan.estimate("llama-7b", "adamw", impl="torch-forloop", seq_len=512), layout, 4)
    # the head's sqrt and quotient next to the final norm's denom: per tensor, unsharded
    assert loop.phases["optimizer_step"]["temporaries"] == (2 * 4096 * 32000 + 4096) * 2


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero2_also_divides_gradients_plus_one_unit(est7b, n):
    s = shard(est7b, "zero2", n)
    unit_grad = largest_unit_numel(est7b.config.model) * 2  # bf16 gradients
    all_grads = est7b.phases["optimizer_step"]["gradients"]
    bwd = est7b.phases["backward"]["gradients"]  # the head's gradient here (start of backward is the peak)
    assert s.phases["backward"]["gradients"] == min(bwd, ceil_div(bwd, n) + unit_grad)
    assert s.phases["optimizer_step"]["gradients"] == ceil_div(all_grads, n)  # reduce-scatters are done
    assert s.phases["forward"]["gradients"] == 0
    for phase, cats in est7b.phases.items():
        assert s.phases[phase]["gradients"] <= cats["gradients"]
        assert s.phases[phase]["parameters"] == cats["parameters"]
        assert s.phases[phase]["optimizer_states"] == ceil_div(cats["optimizer_states"], n)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero3_also_divides_parameters_plus_units_in_flight(est7b, n):
    s = shard(est7b, "zero3", n)
    unit = largest_unit_numel(est7b.config.model) * 2  # bf16 weights
    for phase, cats in est7b.phases.items():
        gathered = UNITS_IN_FLIGHT * unit if phase in ("forward", "backward") else 0
        assert s.phases[phase]["parameters"] == ceil_div(cats["parameters"], n) + gathered
        assert s.phases[phase]["activations"] == cats["activations"]  # micro-batch per GPU: never divided
        assert s.phases[phase]["temporaries"] == cats["temporaries"]


PHASE = {"parameters": 8000, "gradients": 8000, "optimizer_states": 16004, "projectors": 1000,
         "activations": 5000, "temporaries": 300}


@pytest.mark.parametrize("layout,in_pass,expected", [
    # 4 GPUs, all gradients 8000 B, one unit: 1000 B of parameters and 1000 B of gradient
    ("single", True, PHASE),
    ("ddp", True, {**PHASE, "gradients": 8000 + 8000}),
    ("zero1", True, {**PHASE, "optimizer_states": 4001, "projectors": 250}),
    ("zero2", True, {**PHASE, "optimizer_states": 4001, "projectors": 250, "gradients": 2000 + 1000}),
    ("zero2", False, {**PHASE, "optimizer_states": 4001, "projectors": 250, "gradients": 2000}),
    ("zero3", True, {**PHASE, "optimizer_states": 4001, "projectors": 250, "gradients": 2000 + 1000,
                     "parameters": 2000 + UNITS_IN_FLIGHT * 1000}),
    ("zero3", False, {**PHASE, "optimizer_states": 4001, "projectors": 250, "gradients": 2000,
                      "parameters": 2000}),
])
def test_shard_phase_by_hand(layout, in_pass, expected):
    assert shard_phase(PHASE, layout, 4, 8000, 1000, 1000, in_pass=in_pass) == expected


def test_ddp_adds_one_gradient_sized_bucket_buffer(est7b):
    s = shard(est7b, "ddp", 4)
    all_grads = est7b.phases["optimizer_step"]["gradients"]
    for phase, cats in est7b.phases.items():
        assert s.phases[phase]["gradients"] == cats["gradients"] + all_grads
        assert s.phases[phase]["optimizer_states"] == cats["optimizer_states"]
    view = shard(est7b, "ddp", 4, bucket_view=True)
    assert view.phases == est7b.phases


def test_overhead_adds_nccl_buffers_on_multi_gpu(est7b):
    s = shard(est7b, "zero1", 2)
    assert s.overhead == (CUDA_CONTEXT_BYTES + DEFAULT_WORKSPACE_BYTES + fragmentation_bytes(s.phases)
                          + COMM_BUFFER_BYTES)
    single = shard(est7b, "single", 1)
    assert single.phases == est7b.phases and single.overhead == est7b.overhead


def test_more_sharding_never_needs_more_per_gpu():
    est = memplan.estimate("llama-7b", "adamw", checkpointing=True)
    totals = [shard(est, lay, 8).device_total_bytes for lay in LAYOUTS[1:]]
    assert totals == sorted(totals, reverse=True)
    assert shard(est, "zero3", 8).device_total_bytes < est.device_total_bytes


def test_sharded_estimate_keeps_the_estimate_api(est7b):
    s = shard(est7b, "zero3", 8)
    assert isinstance(s, ShardedEstimate) and isinstance(s, memplan.Estimate)
    assert s.peak_bytes == sum(s.phases[s.peak_phase].values())
    assert s.breakdown["overhead"] == s.overhead
    fit = s.fit("a100-40gb")
    assert fit.required_bytes == s.device_total_bytes
    d = s.to_dict()
    assert d["layout"] == "zero3" and d["num_gpus"] == 8 and d["device_total_bytes"] == s.device_total_bytes


@pytest.mark.parametrize("alias,key", [("fsdp", "zero3"), ("ZeRO-2", "zero2"), ("DDP", "ddp"),
                                       ("full_shard", "zero3"), ("zero_1", "zero1")])
def test_layout_aliases(alias, key):
    assert resolve_layout(alias) == key


def test_bad_layouts_are_clear(est7b):
    with pytest.raises(MemplanError, match="Unknown layout 'zero4'.*zero"):
        shard(est7b, "zero4", 2)
    with pytest.raises(MemplanError, match="'single' is one GPU"):
        shard(est7b, "single", 2)
    with pytest.raises(MemplanError, match="positive integer"):
        shard(est7b, "ddp", 0)


@pytest.mark.parametrize("layout", ["ddp", *SHARDED])
def test_per_layer_update_is_single_gpu_only(layout):
    est = memplan.estimate("llama-1b", "galore8bit", layerwise=True)
    with pytest.raises(MemplanError, match="per-layer update.*single-GPU"):
        shard(est, layout, 2)
    assert shard(est, "single", 1).phases == est.phases
