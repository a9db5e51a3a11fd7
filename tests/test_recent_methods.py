"""QLoRA, Q-GaLore, APOLLO, APOLLO-Mini and Fira: each rule against its library, tensor by tensor.

The libraries run here on CPU tensors (bitsandbytes 0.50.2 has a CPU backend); two small
shims are needed and stated in memplan/measure/libs_recent.py. For every weight shape and
dtype: the optimizer state equals the rule byte for byte, and the transient peak of an
ordinary step and of a projection refresh step equals the rule byte for byte.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from memplan import rules_recent as rec  # noqa: E402
from memplan.methods import Shape  # noqa: E402
from memplan.quant import QMAP_BYTES, int8_group_bytes, nf4_bytes  # noqa: E402

SHAPES = [(512, 256, 32), (256, 1024, 64), (768, 768, 128)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

# method, impl, libraries needed, (state rule, step rule, refresh rule), int8 weights
CASES = [
    ("apollo", "apollo-torch", "apollo_torch", (rec.apollo_state, rec.apollo_step_temp, rec.apollo_refresh_temp)),
    ("apollo-mini", "apollo-torch", "apollo_torch",
     (rec.apollo_mini_state, rec.apollo_mini_step_temp, rec.apollo_mini_refresh_temp)),
    ("fira", "fira", "fira", (rec.fira_state, rec.fira_step_temp, rec.fira_refresh_temp)),
    ("qgalore", "q-galore-torch-bf16", "q_galore_torch",
     (rec.qgalore_state, rec.qgalore_step_temp, rec.qgalore_refresh_temp)),
]
INT8_CASES = [
    ("qgalore", "q-galore-torch", "q_galore_torch",
     (rec.qgalore_state, rec.qgalore_int8_step_temp, rec.qgalore_int8_refresh_temp)),
    ("apollo", "q-apollo", "apollo_torch", (rec.qapollo_state, rec.qapollo_step_temp, rec.qapollo_step_temp)),
    ("apollo-mini", "q-apollo", "apollo_torch",
     (rec.qapollo_mini_state, rec.qapollo_mini_step_temp, rec.qapollo_mini_step_temp)),
]


def _libs():
    from memplan.measure import libs_recent

    return libs_recent


def _qmaps(method: str, t: Shape, r: int) -> int:
    """bitsandbytes' two quantization maps, shared by the optimizer's 8-bit tensors (counted once)."""
    from memplan.quant import quantized

    return QMAP_BYTES if method == "qgalore" and quantized(r * t.K if t.projected else t.numel) else 0


def _check(method, impl, rules, m, n, r, dtype, int8, projected=True):
    libs = _libs()
    state_rule, step_rule, refresh_rule = rules
    t = Shape(m, n, projected)
    s = torch.finfo(dtype).bits // 8
    g = torch.Generator().manual_seed(0)
    for gap, rule in ((200, step_rule), (1, None)):  # gap 1: every step refreshes the projection
        full = torch.randn(m, n, dtype=dtype, generator=g)
        w = libs.int8_weight(full) if int8 else torch.nn.Parameter(full)
        opt = libs.build(method, impl, [w], r, gap=gap, projected=projected)
        steps = libs.step_bytes(opt, w, lambda: torch.randn(m, n, dtype=dtype, generator=g))
        states, peak = steps[-1]  # a steady step: state already made, limiter history present
        st, pj = state_rule(t, r, s)
        assert states == {"optimizer_states": st + _qmaps(method, t, r), "projectors": pj}
        if rule is not None:
            assert peak == rule(t, r, s), (method, impl, "step")
        elif projected:  # within the 0-d norms (a refresh frees the limiter's norms in another order)
            assert abs(peak - max(step_rule(t, r, s), refresh_rule(t, r, s))) <= 2 * s, (method, impl, "refresh")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("m,n,r", SHAPES)
@pytest.mark.parametrize("method,impl,lib,rules", CASES, ids=[c[1] + ":" + c[0] for c in CASES])
def test_state_and_transients_equal_the_library(method, impl, lib, rules, m, n, r, dtype):
    pytest.importorskip(lib)
    _check(method, impl, rules, m, n, r, DTYPES[dtype], int8=False)


@pytest.mark.parametrize("m,n,r", SHAPES)
@pytest.mark.parametrize("method,impl,lib,rules", INT8_CASES, ids=[c[1] + ":" + c[0] for c in INT8_CASES])
def test_int8_weight_path_equals_the_library(method, impl, lib, rules, m, n, r):
    pytest.importorskip(lib)
    _check(method, impl, rules, m, n, r, torch.bfloat16, int8=True)  # the float_grad path runs bf16 gradients


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("method,impl,lib,rules", CASES + INT8_CASES[1:], ids=lambda v: v if isinstance(v, str) else "")
def test_non_projected_tensors_equal_the_library(method, impl, lib, rules, dtype):
    pytest.importorskip(lib)
    for m, n in ((1000, 64), (300, 1)):  # an embedding-like matrix; a norm vector below bitsandbytes' 4096
        _check(method, impl, rules, m, n, 8, DTYPES[dtype], int8=False, projected=False)


def test_int8_weight_bytes_equal_q_galore_quantization():
    libs = _libs()
    for m, n in ((512, 256), (1024, 768), (11008 // 16, 4096 // 16)):
        w = libs.int8_weight(torch.randn(m, n, dtype=torch.bfloat16))
        held = sum(x.untyped_storage().nbytes() for x in (w.data, w.scales, w.zeros))
        assert held == int8_group_bytes(m * n, 2)


@pytest.mark.parametrize("m,n", [(1000, 520), (4096, 4096), (11008, 4096), (127, 33)])
def test_nf4_weight_bytes_equal_bitsandbytes(m, n):
    bnb = pytest.importorskip("bitsandbytes")
    w = torch.randn(m, n, dtype=torch.bfloat16)
    p = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True, blocksize=64)
    p = p.to("cpu")  # quantizes, as moving to the GPU does
    qs = p.quant_state
    tensors = [p.data, qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code]
    assert sum(x.untyped_storage().nbytes() for x in tensors) == nf4_bytes(m * n)
    assert (qs.blocksize, qs.state2.blocksize, qs.quant_type) == (64, 256, "nf4")


@pytest.mark.parametrize("r", [4, 16, 64])
def test_qlora_adapter_state_equals_paged_adamw8bit(r):
    bnb = pytest.importorskip("bitsandbytes")
    libs = _libs()
    a = torch.nn.Parameter(torch.zeros(r, 4096))  # peft keeps the adapters in fp32
    b = torch.nn.Parameter(torch.zeros(1024, r))
    opt = bnb.optim.PagedAdamW8bit([a, b], lr=1e-4)
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    with libs.no_cuda_sync():
        opt.step()
    from memplan.measure.tracker import state_bytes
    from memplan.quant import quantized

    want = sum(rec.qlora_state(Shape(x.shape[0], x.shape[1], False), r, 4)[0] for x in (a, b))
    want += QMAP_BYTES if any(quantized(x.numel()) for x in (a, b)) else 0
    assert state_bytes(opt) == {"optimizer_states": want, "projectors": 0}


@pytest.mark.parametrize("method,impl,weights", [("apollo", "apollo-torch", None), ("apollo-mini", "apollo-torch", None),
                                                 ("fira", "fira", None), ("qgalore", "q-galore-torch-bf16", "bf16")])
def test_whole_model_step_matches_the_estimate(tiny, method, impl, weights):
    """The library steps the bundled model (real CPU tensors): state exact, peak within 1%."""
    import memplan
    from memplan.measure.validate import (ValidateConfig, compare, measure_config, summarize_estimate,
                                          summarize_measured)

    pytest.importorskip({"apollo-torch": "apollo_torch", "fira": "fira"}.get(impl, "q_galore_torch"))
    cfg = ValidateConfig(model=tiny, method=method, rank=8, precision="fp32", batch_size=2, seq_len=32,
                         device="cpu", impl=impl)
    est = memplan.estimate(tiny, method, **cfg.estimator_options(), weights=weights)
    err, _ = compare(summarize_estimate(est), summarize_measured(measure_config(cfg)))
    for c in ("parameters", "gradients", "optimizer_states", "projectors"):
        assert err["categories"][c]["bytes"] == 0, c
    assert abs(err["peak"]["relative"]) <= 0.01, err["peak"]  # a block's backward in its MLP: 0.06% here


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_fira_step_over_several_tensors_equals_the_walk(dtype):
    """FiraAdamW's loop keeps each parameter's locals until the next one reassigns them: a whole
    step over dense then projected tensors (its scripts' order) peaks at rec.fira_walk, on an
    ordinary step and on a refresh step, byte for byte (the 0-d norms within 2 elements)."""
    pytest.importorskip("fira")
    from memplan.measure.libs_recent import build, no_cuda_sync
    from memplan.measure.tracker import MemoryTracker

    dt, r, gap = DTYPES[dtype], 16, 2
    s = torch.finfo(dt).bits // 8
    g = torch.Generator().manual_seed(0)
    dense = [torch.nn.Parameter(torch.randn(m, n, dtype=dt, generator=g)) for m, n in ((1000, 64), (300, 1))]
    proj = [torch.nn.Parameter(torch.randn(m, n, dtype=dt, generator=g)) for m, n in ((64, 96), (200, 64), (96, 96))]
    opt = build("fira", "fira", proj, r, gap=gap, regular=dense)
    shapes = [Shape(p.shape[0], p.shape[1] if p.dim() == 2 else 1, i >= len(dense)) for i, p in enumerate(dense + proj)]
    peaks = []
    with no_cuda_sync():
        for _ in range(4):  # steps 0..3; the projector is refreshed at steps 0 and 2
            for p in dense + proj:
                p.grad = torch.randn(p.shape, dtype=dt, generator=g)
            tr = MemoryTracker()
            with tr:
                for p in dense + proj:
                    tr.track(p.data, "parameters")
                    tr.track(p.grad, "gradients")
                tr.watch_optimizer(opt)
                base = tr.total
                tr.set_phase("optimizer_step")
                opt.step()
                tr.set_phase(None)
            for p in dense + proj:
                p.grad = None
            peaks.append(tr.peaks["optimizer_step"]["total"] - base)
    for step, refresh in ((2, True), (3, False)):  # steady steps: the limiter's history exists
        assert abs(peaks[step] - rec.fira_walk(shapes, r, s, refresh)) <= 2 * s, (step, peaks, dtype)
    assert rec.fira_walk(shapes, r, s, True) > max(rec.fira_step_temp(t, r, s) for t in shapes)


@pytest.mark.parametrize("checkpointing,batch,seq", [(False, 2, 64), (True, 1, 16), (False, 1, 16)])
def test_qlora_whole_model_matches_the_estimate(checkpointing, batch, seq):
    """QLoRA as users build it (transformers' LlamaForCausalLM, its target linears as bitsandbytes'
    NF4 Linear4bit with double quantization, peft LoRA, PagedAdamW8bit) steps on the CPU: parameters
    (codes and quantization state), gradients and states exact; the peak within 0.1% and in the same
    phase. At 16 tokens the backward's dequantized weights set the peak."""
    pytest.importorskip("peft")
    from memplan.measure.validate import ValidateConfig, validate

    v = validate(ValidateConfig(model="llama-60m", method="qlora", rank=16, precision="fp32", batch_size=batch,
                                seq_len=seq, checkpointing=checkpointing, device="cpu"))
    for c in ("parameters", "gradients", "optimizer_states", "projectors"):
        assert v.error["categories"][c]["bytes"] == 0, c
    assert abs(v.error["peak"]["relative"]) <= 0.001, v.error["peak"]
    assert v.error["peak_phase_match"]
