"""The planner: bisection searches, fit report, compare, sweep, plan, --gpu local."""
import math
import sys
import types

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import memplan
from memplan import planner
from memplan.errors import MemplanError
from memplan.estimator import capacity_bytes
from memplan.parallel import LAYOUTS
from memplan.planner import _modeled
from memplan.planner import (MAX_SEQ_LEN, fits, largest, make_config, max_batch_size, max_rank, max_seq_len,
                             resolve_gpu)
from memplan.profiles import GPUProfile, load_gpu

SMALL_MODELS = ["llama-60m", "llama-130m", "llama-350m", "roberta-base"]
RANK_METHODS = [m for m, spec in memplan.METHODS.items() if spec.uses_rank]


def gpu_of(mib: int) -> GPUProfile:
    return GPUProfile(id="test", name="Test GPU", memory_mib=mib, usable_mib=mib, memory_source="test")


# ---------------------------------------------------------------- the bisection itself

@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 64, 1000, 4095, 4096, 65537])
@pytest.mark.parametrize("limit", [1, 4096, 1 << 20])
def test_largest_finds_the_threshold_in_log_steps(k, limit):
    calls = []

    def ok(n):
        calls.append(n)
        return n <= k

    assert largest(ok, limit) == min(k, limit)
    assert len(calls) <= 2 * math.log2(limit) + 3  # exponential + binary search, never a scan


def test_largest_keeps_the_fit_boundary_where_memory_is_not_monotone():
    # fits at 1..10 and at 12: the answer fits and the next one does not
    ok = lambda n: n <= 10 or n == 12  # noqa: E731
    n = largest(ok, 100)
    assert ok(n) and not ok(n + 1)


# ---------------------------------------------------------------- property: answer fits, answer + 1 does not

configs = st.fixed_dictionaries({
    "model": st.sampled_from(SMALL_MODELS),
    "method": st.sampled_from(list(memplan.METHODS)),
    "seq_len": st.integers(16, 4096),
    "precision": st.sampled_from(["bf16", "mixed"]),
    "layerwise": st.booleans(),
    "checkpointing": st.booleans(),
    "mib": st.integers(600, 48_000),
})
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _split(cfg):
    cfg = dict(cfg)
    assume(cfg["precision"] != "mixed" or memplan.load_model(cfg["model"]).family == "llama")  # LLaMA-style only
    return cfg.pop("model"), cfg.pop("method"), gpu_of(cfg.pop("mib")), cfg


@FAST
@given(configs)
def test_max_batch_size_fits_and_one_more_does_not(cfg):
    model, method, gpu, opts = _split(cfg)
    b = max_batch_size(model, gpu, method, **opts)
    c = make_config(model, method, **opts)
    if b == 0:
        assert not fits(make_config(c, batch_size=1), gpu)
    else:
        assert fits(make_config(c, batch_size=b), gpu)
        assert not fits(make_config(c, batch_size=b + 1), gpu)


@FAST
@given(configs)
def test_max_seq_len_fits_and_one_more_does_not(cfg):
    model, method, gpu, opts = _split(cfg)
    opts.pop("seq_len")
    s = max_seq_len(model, gpu, method, **opts)
    c = make_config(model, method, batch_size=1, **opts)
    if s == 0:
        assert not fits(make_config(c, seq_len=1), gpu)
    else:
        assert fits(make_config(c, seq_len=s), gpu)
        if s < MAX_SEQ_LEN:
            assert not fits(make_config(c, seq_len=s + 1), gpu)


@FAST
@given(configs, st.sampled_from(RANK_METHODS))
def test_max_rank_fits_and_one_more_does_not(cfg, method):
    model, _, gpu, opts = _split(cfg)
    r = max_rank(model, gpu, method, **opts)
    c = make_config(model, method, rank=1, **opts)
    k = planner.rank_limit(c)
    assert 0 <= r <= k
    if r == 0:
        assert not fits(c, gpu)
    else:
        assert fits(make_config(c, rank=r), gpu)
        if r < k:
            assert not fits(make_config(c, rank=r + 1), gpu)


@FAST
@given(st.sampled_from(["llama-130m", "llama-350m"]), st.integers(1, 8).map(lambda e: 2**(e % 4)),
       st.sampled_from(LAYOUTS[1:]), st.integers(1000, 24_000))
def test_max_batch_size_under_a_layout_fits_and_one_more_does_not(model, n, layout, mib):
    gpu = gpu_of(mib)
    b = max_batch_size(model, gpu, "adamw", layout=layout, num_gpus=n)
    c = make_config(model, "adamw")
    if b:
        assert fits(make_config(c, batch_size=b), gpu, layout, n)
        assert not fits(make_config(c, batch_size=b + 1), gpu, layout, n)


# ---------------------------------------------------------------- searches: edges and inputs

def test_searches_return_zero_when_even_one_does_not_fit():
    tiny_gpu = gpu_of(600)  # less than the CUDA context and llama-7b's weights
    assert max_batch_size("llama-7b", tiny_gpu, "adamw") == 0
    assert max_seq_len("llama-7b", tiny_gpu, "adamw") == 0
    assert max_rank("llama-7b", tiny_gpu, "galore") == 0


def test_max_rank_is_none_without_a_rank():
    assert max_rank("llama-7b", "h200", "adamw") is None


def test_max_rank_stops_at_the_smallest_projected_dimension():
    assert max_rank("llama-60m", "h200", "galore") == 512  # hidden size of llama-60m


def test_sequence_search_goes_past_max_position_embeddings_up_to_the_limit(tiny):
    assert max_seq_len("llama-60m", "h200", "adamw") > load_model_pos("llama-60m")
    assert max_seq_len(tiny, "h200", "adamw") == MAX_SEQ_LEN  # a result at the limit means "at least"


def load_model_pos(name):
    return memplan.load_model(name).max_position_embeddings


def test_config_and_keyword_forms_agree():
    c = make_config("llama-1b", "golore", rank=256, seq_len=1024, checkpointing=True)
    assert max_batch_size(c, "rtx-4090") == max_batch_size("llama-1b", "rtx-4090", "golore", rank=256,
                                                            seq_len=1024, checkpointing=True)
    assert memplan.max_batch_size is max_batch_size


def test_sharding_raises_the_largest_batch():
    single = max_batch_size("llama-1b", "rtx-4090", "adamw", checkpointing=True)
    zero3 = max_batch_size("llama-1b", "rtx-4090", "adamw", checkpointing=True, layout="zero3", num_gpus=8)
    assert zero3 > single


def test_unknown_option_is_named():
    with pytest.raises(MemplanError, match="Unknown option.*batchsize"):
        max_batch_size("llama-1b", "rtx-4090", "adamw", batchsize=2)


# ---------------------------------------------------------------- fit report, compare, sweep

def test_fit_report_rows_agree_with_the_estimator():
    rows = planner.fit_report("llama-7b", "rtx-4090", ["galore8bit", "adamw"], seq_len=1024)
    assert [(r.method, r.layerwise, r.checkpointing) for r in rows] == [
        (m, lw, ck) for m in ("galore8bit", "adamw") for lw in (False, True) for ck in (False, True)]
    for r in rows:
        est = memplan.estimate("llama-7b", r.method, seq_len=1024, layerwise=r.layerwise,
                               checkpointing=r.checkpointing)
        fit = est.fit("rtx-4090")
        assert (r.fits, r.required_bytes, r.headroom_bytes) == (fit.fits, fit.required_bytes, fit.headroom_bytes)
        assert r.fits == (r.max_batch_size >= 1)
        assert (r.rank is None) == (r.method == "adamw") == (r.max_rank is None)
    assert any(r.fits for r in rows) and not all(r.fits for r in rows)


def test_compare_is_sorted_and_measured_against_adamw():
    rows = memplan.compare("llama-1b", ["galore", "golore", "adam8bit"], rank=128, gpu="rtx-4090")
    peaks = [r.estimate.peak_bytes for r in rows]
    assert peaks == sorted(peaks)
    adamw = memplan.estimate("llama-1b", "adamw").peak_bytes
    for r in rows:
        assert r.saved_bytes == adamw - r.estimate.peak_bytes
        assert r.saved_fraction == pytest.approx(r.saved_bytes / adamw)
        assert r.estimate.gpu.id == "rtx-4090"
    assert {r.method for r in rows} == {"galore", "golore", "adam8bit"}
    full = memplan.compare("llama-1b")
    assert [r for r in full if r.method == "adamw"][0].saved_bytes == 0 and len(full) == len(memplan.METHODS)


def test_sweep_covers_the_grid():
    rows = memplan.sweep("llama-1b", "galore", ranks=[64, 128, 256, 512], batch_sizes=[1, 4, 16], gpu="rtx-4090")
    assert len(rows) == 12
    assert {(r["rank"], r["batch_size"]) for r in rows} == {(r, b) for r in (64, 128, 256, 512) for b in (1, 4, 16)}
    one = [r for r in rows if r["rank"] == 256 and r["batch_size"] == 4][0]
    est = memplan.estimate("llama-1b", "galore", rank=256, batch_size=4)
    assert one["peak_allocated_bytes"] == est.peak_bytes and one["device_total_bytes"] == est.device_total_bytes
    assert one["fits"] == est.fit("rtx-4090").fits
    with pytest.raises(MemplanError, match="no rank"):
        memplan.sweep("llama-1b", "adamw", ranks=[64])


# ---------------------------------------------------------------- plan

@pytest.fixture(scope="module")
def plan13b():
    return memplan.plan("llama-13b", "galore8bit", batch_size=4, seq_len=2048, checkpointing=True)


def test_plan_rows_fit_with_the_least_sharded_layout(plan13b):
    c = make_config("llama-13b", "galore8bit", batch_size=4, seq_len=2048, checkpointing=True)
    assert plan13b
    for r in plan13b:
        assert r.per_gpu_bytes <= r.capacity_bytes == capacity_bytes(r.gpu)
        assert fits(c, r.gpu, r.layout, r.num_gpus)
        less = LAYOUTS[1:LAYOUTS.index(r.layout)] if r.num_gpus > 1 else []
        assert not any(fits(c, r.gpu, lay, r.num_gpus) for lay in less)
        assert r.max_batch_size >= 4
        assert (r.num_gpus == 1) == (r.layout == "single")


def test_plan_lists_every_gpu_and_count_that_fits(plan13b):
    c = make_config("llama-13b", "galore8bit", batch_size=4, seq_len=2048, checkpointing=True)
    listed = {(r.gpu.id, r.num_gpus) for r in plan13b}
    for gpu in memplan.load_gpus().values():
        for n in (1, 2, 4, 8):
            layouts = ["single"] if n == 1 else [lay for lay in LAYOUTS[1:] if _modeled(lay, n, c)]
            assert ((gpu.id, n) in listed) == any(fits(c, gpu, lay, n) for lay in layouts)


def test_plan_is_cheapest_first(plan13b):
    hourly = [r.price_per_hour_usd for r in plan13b if r.price_per_hour_usd is not None]
    assert hourly == sorted(hourly)
    r = plan13b[0]
    assert r.price_per_hour_usd == pytest.approx(r.num_gpus * r.gpu.price_per_hour_usd)
    assert r.price_purchase_usd == pytest.approx(r.num_gpus * r.gpu.price_purchase_usd)
    by_purchase = memplan.plan("llama-13b", "galore8bit", batch_size=4, checkpointing=True, sort="purchase")
    bought = [r.price_purchase_usd for r in by_purchase]
    assert bought == sorted(bought)


def test_plan_gpus_without_price_come_last(tmp_path):
    f = tmp_path / "gpus.toml"
    f.write_text('[cheap-big]\nname = "Unpriced GPU"\nmemory_mib = 200000\nmemory_source = "test"\n'
                 '[rtx-4090]\nprice_per_hour_usd = 0.01\n')
    rows = memplan.plan("llama-1b", "adamw", gpu_file=str(f))
    assert rows[0].gpu.id == "rtx-4090" and rows[0].price_per_hour_usd == pytest.approx(0.01)
    assert rows[-1].gpu.id == "cheap-big" and rows[-1].price_per_hour_usd is None


def test_plan_min_headroom_keeps_a_margin_everywhere():
    margin = 4 * 2**30
    loose = memplan.plan("llama-7b", "galore8bit", layerwise=True, checkpointing=True)
    safe = memplan.plan("llama-7b", "galore8bit", layerwise=True, checkpointing=True, min_headroom=margin)
    assert safe and all(r.headroom_bytes >= margin for r in safe)
    assert {r.gpu.id for r in safe} == {r.gpu.id for r in loose if r.headroom_bytes >= margin}
    by_id = {r.gpu.id: r for r in loose}
    for r in safe:
        assert r.max_batch_size <= by_id[r.gpu.id].max_batch_size
        c = make_config("llama-7b", "galore8bit", layerwise=True, checkpointing=True, batch_size=r.max_batch_size)
        assert fits(c, r.gpu, min_headroom=margin)
        assert not fits(make_config(c, batch_size=r.max_batch_size + 1), r.gpu, min_headroom=margin)


def test_plan_never_proposes_a_refused_layout():
    # projection methods under FSDP2 are not modeled: the plan offers them DDP or zero1 only
    rows = memplan.plan("llama-13b", "galore", batch_size=1, checkpointing=True)
    assert any(r.num_gpus > 1 for r in rows) and all(r.layout in ("single", "ddp", "zero1") for r in rows)


def test_plan_with_per_layer_update_is_single_gpu():
    rows = memplan.plan("llama-7b", "galore8bit", layerwise=True, checkpointing=True)
    assert rows and all(r.num_gpus == 1 and r.layout == "single" for r in rows)


def test_plan_with_cpu_offload_is_single_gpu_and_checks_the_host():
    est = memplan.estimate("llama-7b", "adamw", offload="optimizer")
    rows = memplan.plan("llama-7b", "adamw", offload="optimizer")
    assert rows and all(r.num_gpus == 1 and r.layout == "single" for r in rows)
    assert {r.host_bytes for r in rows} == {est.host_bytes} and rows[0].to_dict()["host_bytes"] == est.host_bytes
    assert memplan.plan("llama-7b", "adamw", offload="optimizer", host_ram=est.host_bytes) == rows
    assert memplan.plan("llama-7b", "adamw", offload="optimizer", host_ram=est.host_bytes - 1) == []
    assert all(r.host_bytes == 0 for r in memplan.plan("llama-7b", "adamw", gpus=["h200"]))
    with pytest.raises(MemplanError, match="CPU offload.*one GPU only: include 1 in --gpu-counts"):
        memplan.plan("llama-7b", "adamw", offload="optimizer", gpu_counts=[2, 4])


def test_plan_restricted_layouts_and_counts():
    rows = memplan.plan("llama-7b", "adamw", gpu_counts=[4], layouts=["fsdp"], gpus=["rtx-4090"],
                        checkpointing=True)
    assert [(r.gpu.id, r.num_gpus, r.layout) for r in rows] == [("rtx-4090", 4, "fsdp2")]
    assert rows[0].engine == "FSDP2, reshard after forward" and rows[0].to_dict()["engine"] == rows[0].engine
    with pytest.raises(MemplanError, match="sort"):
        memplan.plan("llama-7b", sort="cheapest")


# ---------------------------------------------------------------- GPUs: user files and --gpu local

def test_bad_gpu_file_names_the_field(tmp_path):
    f = tmp_path / "gpus.json"
    f.write_text('{"my-gpu": {"name": "Mine", "memory_mib": "lots", "memory_source": "me"}}')
    with pytest.raises(MemplanError, match="memory_mib"):
        memplan.plan("llama-1b", gpu_file=str(f))


def test_user_gpu_file_adds_a_gpu(tmp_path):
    f = tmp_path / "gpus.toml"
    f.write_text('[my-gpu]\nname = "Mine"\nmemory_mib = 65536\nmemory_source = "me"\n')
    assert max_batch_size("llama-1b", "my-gpu", "adamw", gpu_file=str(f)) >= 1


def test_local_gpu_without_nvml_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with pytest.raises(MemplanError, match=r"nvidia-ml-py is not installed: pip install 'memplan\[nvml\]'"):
        resolve_gpu("local")


def fake_nvml(init_error=None, devices=()):
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nv.NVMLError = NVMLError

    def init():
        if init_error:
            raise NVMLError(init_error)

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: len(devices)
    nv.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    nv.nvmlDeviceGetName = lambda h: h[0]
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=h[1], used=h[2], free=h[1] - h[2])
    nv.nvmlSystemGetDriverVersion = lambda: "555.55"
    return nv


def test_local_gpu_without_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_error="Driver Not Loaded"))
    with pytest.raises(MemplanError, match=r"No NVIDIA GPU or driver found \(NVML: Driver Not Loaded\)"):
        max_batch_size("llama-1b", "local", "adamw")


def test_local_gpu_with_zero_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    with pytest.raises(MemplanError, match="No NVIDIA GPU found"):
        resolve_gpu("local")


def test_local_gpu_profile_from_nvml(monkeypatch):
    h100 = ("NVIDIA H100 80GB HBM3", 81559 * 2**20, 3 * 2**20)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(devices=[h100, h100]))
    g = resolve_gpu("local:1")
    assert (g.id, g.name, g.memory_mib) == ("local:1", "NVIDIA H100 80GB HBM3", 81559)
    assert "555.55" in g.memory_source and "3 MiB" in g.memory_source
    assert max_batch_size("llama-1b", "local", "adamw") == max_batch_size(
        "llama-1b", GPUProfile("x", "x", 81559, "x"), "adamw")
    with pytest.raises(MemplanError, match="No local GPU 2.*local:0 to local:1"):
        resolve_gpu("local:2")
    with pytest.raises(MemplanError, match="local:N"):
        resolve_gpu("local:first")


def test_named_gpus_still_resolve():
    assert resolve_gpu("RTX_4090") == load_gpu("rtx-4090")


def test_max_rank_without_rank_on_a_narrow_model(tiny):
    # tiny's smallest projected dimension is 32: the default rank 128 must not be checked first
    r = max_rank(tiny, "h100-80gb", "galore", batch_size=1, seq_len=16)
    assert r == 32
