"""Mixture of experts (memplan/moe.py) against transformers' MixtralForCausalLM.

The HF class is built from the profile (random weights) under FakeTensorMode and
trained for real steps with memplan's bundled optimizer; memplan's tracker and
PyTorch's MemTracker measure it. Parameters, gradients and optimizer states must
match the estimate to the byte, and the activations and backward temporaries a
MoE block adds over a LLaMA block (Mixtral minus LlamaForCausalLM of the same
shape) exactly; the AdamW peak within 1%.
"""
from __future__ import annotations

import pytest

import memplan
from memplan.profiles import ModelProfile

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_moe(**kw) -> ModelProfile:
    fields = dict(name="tiny-mixtral", family="llama", model_type="mixtral", hidden_size=128, intermediate_size=256,
                  num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, vocab_size=512,
                  max_position_embeddings=1024, tie_word_embeddings=False, hidden_act="silu", rms_norm_eps=1e-5,
                  num_local_experts=4, num_experts_per_tok=2)
    fields.update(kw)
    return ModelProfile(**fields)


def hf_config(p: ModelProfile, moe: bool = True):
    common = dict(hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
                  num_attention_heads=p.num_attention_heads, num_key_value_heads=p.num_key_value_heads,
                  num_hidden_layers=p.num_hidden_layers, vocab_size=p.vocab_size,
                  max_position_embeddings=p.max_position_embeddings, tie_word_embeddings=p.tie_word_embeddings,
                  rms_norm_eps=p.rms_norm_eps, use_cache=False)
    if moe:
        cfg = transformers.MixtralConfig(num_local_experts=p.num_local_experts,
                                         num_experts_per_tok=p.num_experts_per_tok, sliding_window=None,
                                         router_jitter_noise=0.0, **common)
    else:
        cfg = transformers.LlamaConfig(**common)
    cfg._attn_implementation = "sdpa"
    return cfg


def build(p: ModelProfile, moe: bool = True):
    cls = transformers.MixtralForCausalLM if moe else transformers.LlamaForCausalLM
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = cls(hf_config(p, moe))
    finally:
        torch.set_default_dtype(old)
    return model.train()


def _fake():
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode()


def measure(p: ModelProfile, method: str, batch: int, seq: int, moe: bool = True, memtracker: bool = False):
    """Two steps (warm-up, then the measured one) of the HF model under FakeTensorMode."""
    from memplan.measure.step import measure_step
    from memplan.optim import build_optimizer

    with _fake():
        model = build(p, moe)
        opt = build_optimizer(model, method, rank=16, update_gap=200)
        ids = torch.randint(0, p.vocab_size, (batch, seq))
        data = {"input_ids": ids, "labels": ids.clone()}
        measure_step(model, opt, data)
        m = measure_step(model, opt, data)
        mt = None
        if memtracker:
            from torch.distributed._tools.mem_tracker import MemTracker
            mt = MemTracker()
            mt.track_external(model, opt, ids, data["labels"])
            with mt:
                model(**data).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            mt = mt.get_tracker_snapshot("peak")
    return m, mt


def test_mixtral_8x7b_has_46_7b_parameters_like_the_hf_class():
    p = memplan.load_model("mixtral-8x7b")
    assert memplan.parameter_count(p) == 46_702_792_704
    with _fake():
        model = build(p)
        assert sum(t.numel() for t in model.parameters()) == 46_702_792_704


def test_inventory_names_and_shapes_are_the_hf_ones():
    p = tiny_moe()
    model = build(p)
    hf = {n: tuple(t.shape) for n, t in model.named_parameters()}
    ours = {s.name: s.shape for s in memplan.inventory(p)}
    assert ours == hf


@pytest.mark.parametrize("shape", [dict(), dict(hidden_size=64, intermediate_size=192, num_local_experts=8,
                                                num_experts_per_tok=1)])
def test_moe_block_activations_are_exact(shape):
    """What a MoE block saves beyond a LLaMA block of the same shape, to the byte (HF classes, fake tensors)."""
    from memplan.activations import activations

    p = tiny_moe(num_hidden_layers=1, **shape)
    dense = ModelProfile(**{**p.__dict__, "num_local_experts": 0, "num_experts_per_tok": 0})
    b, s = 2, 48
    moe_saved = measure(p, "adamw", b, s)[0].saved
    dense_saved = measure(dense, "adamw", b, s, moe=False)[0].saved
    est = activations(p, b, s, 2, 2, 0, 0).block - activations(dense, b, s, 2, 2, 0, 0).block
    assert moe_saved - dense_saved == est


# the implementation memplan.optim.build_optimizer builds for each method (memplan/impls.py names)
BUILT = {"adamw": dict(impl="torch-forloop"), "galore": dict(impl="bundled"), "adafactor": dict(impl="bundled"),
         "adam8bit": dict(impl="bundled"), "sgd": dict(impl="torch", momentum=0.9)}


def _errors(p, method, m, b, s):
    est = memplan.estimate(p, method, rank=16, batch_size=b, seq_len=s, **BUILT[method])
    return est, {ph: {c: est.phases[ph][c] - m.phases[ph][c] for c in est.phases[ph]}
                 for ph in ("forward", "backward", "optimizer_step")}


@pytest.mark.parametrize("method", ["adamw", "galore", "adafactor", "adam8bit", "sgd"])
def test_mixtral_step_matches_the_estimate(method):
    """All experts' parameters, gradients and states exact; MemTracker agrees; the experts add no error.

    The activations of HF's LLaMA attention blocks are the per-family rules' business
    (memplan/activations.py); what the MoE adds must carry no error of its own: every phase's
    activation error is the dense LlamaForCausalLM's of the same shape, to the byte.
    """
    p = tiny_moe()
    dense = ModelProfile(**{**p.__dict__, "num_local_experts": 0, "num_experts_per_tok": 0})
    b, s = 2, 64
    m, mt = measure(p, method, b, s, memtracker=True)
    est, err = _errors(p, method, m, b, s)
    assert m.persistent["parameters"] == est.phases["forward"]["parameters"]
    assert m.persistent["gradients"] == max(ph["gradients"] for ph in est.phases.values())
    assert m.persistent["optimizer_states"] == est.phases["optimizer_step"]["optimizer_states"]
    assert m.persistent["projectors"] == est.phases["optimizer_step"]["projectors"]
    for ph in err:
        assert {c: err[ph][c] for c in ("parameters", "gradients", "optimizer_states", "projectors")} == \
            dict.fromkeys(("parameters", "gradients", "optimizer_states", "projectors"), 0), ph
    dm, _ = measure(dense, method, b, s, moe=False)
    _, dense_err = _errors(dense, method, dm, b, s)
    for ph in ("forward", "backward"):
        assert err[ph]["activations"] == dense_err[ph]["activations"], ph
        assert err[ph]["temporaries"] == dense_err[ph]["temporaries"], ph
    if method == "adamw":  # the peak is the optimizer step, where the activations are gone
        assert abs(est.peak_bytes - m.peak_bytes) <= 0.01 * m.peak_bytes
    (snap,) = mt.values()
    assert snap["Parameter"] == m.persistent["parameters"]
    assert abs(snap["Total"] - m.peak_bytes) <= 0.01 * m.peak_bytes


def test_moe_refusals_name_the_reason():
    p = tiny_moe()
    with pytest.raises(memplan.MemplanError, match="only --precision bf16"):
        memplan.estimate(p, "adamw", precision="mixed")


@pytest.mark.parametrize("args", [
    ["estimate", "--model", "mixtral-8x7b", "--method", "galore8bit", "--layerwise", "--gpu", "h200"],
    ["fit", "--model", "mixtral-8x7b", "--gpu", "h200", "--methods", "adamw,galore8bit,lora"],
    ["compare", "--model", "mixtral-8x7b", "--gpu", "h200"],
    ["plan", "--model", "mixtral-8x7b", "--method", "galore8bit", "--top", "3"],
    ["sweep", "--model", "mixtral-8x7b", "--method", "galore", "--ranks", "64,128"],
    ["advise", "--model", "mixtral-8x7b", "--gpu", "h200"],
])
def test_every_command_takes_a_moe_model(args):
    """Default target modules of a MoE model are its attention linears: every command runs on it."""
    from click.testing import CliRunner

    from memplan.cli.main import cli

    res = CliRunner().invoke(cli, args)
    assert res.exit_code in (0, 3) and "Error" not in res.output, res.output[-500:]
    assert memplan.estimate("mixtral-8x7b", "lora").to_dict()["config"]["target_modules"] == \
        ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.mark.parametrize("frozen", [False, True])
def test_moe_block_saves_what_the_rule_says(frozen):
    """transformers' MixtralSparseMoeBlock alone: every tensor autograd saves, counted once per storage,
    equals memplan.moe.moe_block (trainable experts, or frozen as under LoRA)."""
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from memplan.moe import moe_block

    p = tiny_moe(hidden_size=64, intermediate_size=96, num_local_experts=8, num_experts_per_tok=2)
    cfg = hf_config(p)
    cfg._experts_implementation = "grouped_mm"
    t = 96
    with _fake():
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            block = MixtralSparseMoeBlock(cfg)
        finally:
            torch.set_default_dtype(old)
        params = {id(q.untyped_storage()) for q in block.parameters()}
        for q in block.parameters():
            q.requires_grad_(not frozen)
        x = torch.randn(2, t // 2, p.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        seen = {}

        def pack(tensor):
            key = id(tensor.untyped_storage())
            if key not in params:
                seen[key] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            block(x)
    router_input = 0 if frozen else 2 * t * p.hidden_size  # the block's input, saved by the router's linear
    assert sum(seen.values()) == moe_block(p, t, 2, frozen=frozen) + router_input
