"""Multi-GPU layouts (memplan/parallel.py): the ZeRO paper's closed form, ZeroRedundancyOptimizer's
assignment, FSDP2's padded dim-0 shards, the API and the refusals. The layouts are checked
against runs of PyTorch's engine in tests/test_distributed.py."""
import pytest

import memplan
from memplan.errors import MemplanError
from memplan.estimator import CUDA_CONTEXT_BYTES
from memplan.inventory import inventory
from memplan.reserve import DEFAULT_WORKSPACE_BYTES, fragmentation_bytes
from memplan.parallel import (COMM_BUFFER_BYTES, ENGINES, LAYOUTS, ShardedEstimate, largest_unit_numel,
                              resolve_layout, shard, sharding_units, zero_assignment)
from memplan.profiles import load_model


def ceil_div(a, b):
    return -(-a // b)


@pytest.fixture(scope="module")
def adamw7b():
    return memplan.estimate("llama-7b", "adamw", batch_size=1, seq_len=2048, impl="torch-forloop")


def test_units_of_the_tiny_model(tiny):
    units = sharding_units(load_model(tiny), memplan.DEFAULT_TARGET_MODULES["llama"])
    assert units == {"model.embed_tokens": 6400, "model.layers.0": 2 * 64 + 4096 + 2 * 2048 + 4096 + 3 * 8192,
                     "model.norm": 64, "lm_head": 6400}
    assert largest_unit_numel(load_model(tiny)) == 36992


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero_paper_closed_form_for_model_states(adamw7b, n):
    """Rajbhandari et al. (ZeRO, 2020), model states per GPU with Psi parameters, 2-byte weights and
    gradients and K bytes of optimizer state per parameter: P_os = 2 Psi + 2 Psi + K Psi / N (zero1;
    DDP's buckets come on top, 2 Psi), P_os+g+p = (2 + 2 + K) Psi / N (fsdp2 at rest). Pure bf16
    AdamW keeps two bf16 moments: K = 4 (plus torch's 4-byte step per tensor)."""
    psi = adamw7b.parameter_count
    tensors = len(inventory("llama-7b"))
    step = 4 * tensors
    z1 = shard(adamw7b, "zero1", n).phases["optimizer_step"]
    assert z1["parameters"] == 2 * psi
    assert z1["gradients"] == 2 * psi + 2 * psi  # .grad + DDP's buckets
    largest = max(s.numel for s in inventory("llama-7b"))
    # greedy whole tensors: the worst rank is within one tensor of the even share
    assert 4 * psi / n <= z1["optimizer_states"] <= 4 * psi / n + 4 * largest + step
    f = shard(adamw7b, "fsdp2", n).phases["optimizer_step"]
    rows = sum(ceil_div(s.shape[0], n) * (s.numel // s.shape[0]) for s in inventory("llama-7b"))
    assert f["parameters"] == 2 * rows and f["gradients"] == 2 * rows and f["optimizer_states"] == 4 * rows + step
    assert 2 * psi / n <= f["parameters"] <= 2 * psi / n + 2 * tensors * 4096  # padding: < one row per tensor
    assert (f["parameters"] + f["gradients"] + f["optimizer_states"]) / ((2 + 2 + 4) * psi / n) == pytest.approx(1, abs=1e-3)


def test_zero_assignment_is_torchs_greedy_rule():
    # largest first, to the rank with the fewest elements (lowest rank on ties); sizes carry across groups
    assert zero_assignment([[5, 3, 3, 1]], 2) == [[[0, 3], [1, 2]]]
    assert zero_assignment([[4, 4], [2, 1]], 2) == [[[0], [1]], [[0], [1]]]
    assert zero_assignment([[1, 9, 2]], 3) == [[[1], [2], [0]]]


def test_zero1_worst_rank_is_a_real_rank(adamw7b):
    s = shard(adamw7b, "zero1", 4)
    assert 0 <= s.rank < 4 and s.to_dict()["worst_rank"] == s.rank


def test_ddp_buckets(adamw7b):
    grads = adamw7b.phases["optimizer_step"]["gradients"]
    s = shard(adamw7b, "ddp", 4)
    for phase, cats in adamw7b.phases.items():
        assert s.phases[phase]["gradients"] == cats["gradients"] + grads
    view = shard(adamw7b, "ddp", 4, bucket_view=True)
    assert view.phases["optimizer_step"] == adamw7b.phases["optimizer_step"]
    assert view.phases["forward"]["gradients"] == grads and view.engine == "DDP, gradient_as_bucket_view"


def test_overhead_adds_nccl_buffers_on_multi_gpu(adamw7b):
    s = shard(adamw7b, "zero1", 2)
    assert s.overhead == (CUDA_CONTEXT_BYTES + DEFAULT_WORKSPACE_BYTES + fragmentation_bytes(s.phases)
                          + COMM_BUFFER_BYTES)
    single = shard(adamw7b, "single", 1)
    assert single.phases == adamw7b.phases and single.overhead == adamw7b.overhead


def test_sharded_estimate_keeps_the_estimate_api(adamw7b):
    s = shard(adamw7b, "fsdp2", 8)
    assert isinstance(s, ShardedEstimate) and isinstance(s, memplan.Estimate)
    assert s.peak_bytes == sum(s.phases[s.peak_phase].values())
    assert s.fit("a100-40gb").required_bytes == s.device_total_bytes
    d = s.to_dict()
    assert d["layout"] == "fsdp2" and d["engine"] == "FSDP2, reshard after forward" and d["num_gpus"] == 8


@pytest.mark.parametrize("alias,key", [("fsdp", "fsdp2"), ("ZeRO-3", "fsdp2"), ("ZeRO-2", "fsdp2-no-reshard"),
                                       ("DDP", "ddp"), ("full_shard", "fsdp2"), ("zero_1", "zero1"),
                                       ("FSDP2_no_reshard", "fsdp2-no-reshard")])
def test_layout_aliases(alias, key):
    assert resolve_layout(alias) == key and key in ENGINES


def test_bad_layouts_are_clear(adamw7b):
    with pytest.raises(MemplanError, match="Unknown layout 'zero4'"):
        shard(adamw7b, "zero4", 2)
    with pytest.raises(MemplanError, match="'single' is one GPU"):
        shard(adamw7b, "single", 2)
    with pytest.raises(MemplanError, match="positive integer"):
        shard(adamw7b, "ddp", 0)


@pytest.mark.parametrize("method", ["galore", "golore", "sumo", "gradnormlorp", "adam8bit"])
def test_fsdp2_refuses_what_it_does_not_model(method):
    est = memplan.estimate("llama-60m", method)
    with pytest.raises(MemplanError, match=f"'{method}' under FSDP2 is not modeled.*zero1"):
        shard(est, "fsdp2", 2)
    assert shard(est, "zero1", 2).peak_bytes < shard(est, "ddp", 2).peak_bytes


def test_fsdp2_mixed_precision_is_refused():
    with pytest.raises(MemplanError, match="mixed.*not modeled"):
        shard(memplan.estimate("llama-60m", "adamw", precision="mixed"), "fsdp2", 2)


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_per_layer_update_is_single_gpu_only(layout):
    est = memplan.estimate("llama-1b", "galore8bit", layerwise=True)
    with pytest.raises(MemplanError, match="per-layer update.*single-GPU"):
        shard(est, layout, 2)


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_cpu_offload_is_single_gpu_only(layout):
    # torchao's CPUOffloadOptimizer in one process: a multi-GPU recomposition of its terms is not modeled
    # (it gave FSDP2 on 2 GPUs more per GPU than one GPU), so it is refused, not shown
    est = memplan.estimate("llama-7b", "adamw", offload="optimizer")
    with pytest.raises(MemplanError, match=r"CPU offload \(--offload optimizer\) is modeled on one GPU only"):
        shard(est, layout, 2)
    assert shard(est, "single", 1).device_total_bytes == est.device_total_bytes


def test_step_transients_follow_each_ranks_own_tensors():
    # foreach AdamW's buffers span the tensors a rank steps; the for-loop keeps the previous tensor's
    # denom, and ZeRO's local optimizer steps its tensors largest first (the head first: none before it)
    foreach = memplan.estimate("llama-7b", "adamw", impl="torch-foreach", seq_len=512)
    for lay in ("zero1", "fsdp2"):
        s = shard(foreach, lay, 4).phases["optimizer_step"]["temporaries"]
        assert s < foreach.phases["optimizer_step"]["temporaries"] / 3
    loop = memplan.estimate("llama-7b", "adamw", impl="torch-forloop", seq_len=512)
    assert loop.phases["optimizer_step"]["temporaries"] == (2 * 4096 * 32000 + 4096) * 2
    assert shard(loop, "zero1", 4).phases["optimizer_step"]["temporaries"] == 2 * 4096 * 32000 * 2
    assert shard(loop, "fsdp2", 4).phases["optimizer_step"]["temporaries"] == (2 * 4096 * 8000 + 1024) * 2
