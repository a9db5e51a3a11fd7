"""The model-side rules (memplan/activations.py) against the Hugging Face class of each family,
measured under FakeTensorMode: attention implementation, dropout, each class's loss, explicit
head_dim, tied embeddings. Tiny 2-block configs in tests/data/hf (a second each)."""
import json
from pathlib import Path

import pytest

import memplan
from memplan.cli.main import cli

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memplan.measure.validate import EXACT, ValidateConfig, validate  # noqa: E402

HF = Path(__file__).parent / "data" / "hf"
FAMILIES = {"llama": "tiny_llama_gqa.json", "gpt2": "tiny_gpt2.json", "opt": "tiny_opt.json",
            "roberta": "tiny_roberta.json", "bert": "tiny_bert.json", "nemo": "tiny_nemo.json",
            "qwen2": "tiny_qwen2.json", "qwen3": "tiny_qwen3.json"}
TOL = 0.01  # peak and activations within 1% of the measured peak


def run(family, **kw):
    kw.setdefault("batch_size", 2)
    kw.setdefault("seq_len", 24)
    v = validate(ValidateConfig(model=str(HF / FAMILIES[family]), method=kw.pop("method", "adamw"), rank=4,
                                device="fake", implementation="hf", **kw))
    for c in EXACT:
        assert v.error["categories"][c]["bytes"] == 0, (c, v.error["categories"][c])
    peak = v.measured["peak_bytes"]
    assert abs(v.error["peak"]["relative"]) <= TOL, v.error["peak"]
    for phase in ("forward", "backward"):
        e, m = v.estimate["phases"][phase], v.measured["phases"][phase]
        assert abs(e["total"] - m["total"]) <= TOL * peak, (phase, e, m)
        assert abs(e["activations"] - m["activations"]) <= TOL * peak, (phase, e, m)
    assert v.error["peak_phase_match"]
    return v


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_family_without_dropout(family, attn):
    run(family, attn=attn, attn_dropout=0.0, hidden_dropout=0.0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "roberta"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_family_with_dropout(family, attn):
    # attention and hidden dropout 0.1: masks per residual branch; eager keeps the dropped probabilities;
    # on the CPU SDPA with dropout takes the math path (validation estimates with the CPU kernels)
    run(family, attn=attn, attn_dropout=0.1, hidden_dropout=0.1)


@pytest.mark.parametrize("method,kw", [("lora", {}), ("lora", {"checkpointing": True}),
                                       ("lora", {"precision": "mixed"}),
                                       ("galore", {"precision": "mixed", "checkpointing": True})])
def test_qwen3_norms_over_q_and_k(method, kw):
    # Qwen3's q_norm and k_norm save an fp32 upcast, a per-head rsqrt and, with a trainable weight, the
    # normalized value; frozen (LoRA) they keep only the first two
    run("qwen3", method=method, attn_dropout=0.0, hidden_dropout=0.0, **kw)


def test_activations_follow_the_settings():
    base = dict(batch_size=4, seq_len=1024)
    sdpa = memplan.estimate("llama-1b", **base).phases["forward"]["activations"]
    eager = memplan.estimate("llama-1b", attn="eager", **base).phases["forward"]["activations"]
    # eager keeps the fp32 softmax and its bf16 copy: 6 B per (head x token x token) per layer; its
    # contiguous copies of q, k, v and the output weigh what SDPA's q, k, v and output do (no GQA
    # here), and it keeps no logsumexp
    p = memplan.load_model("llama-1b")
    t, nh, L = 4 * 1024, p.num_attention_heads, p.num_hidden_layers
    assert eager - sdpa == L * (6 * 4 * nh * 1024 * 1024 - 4 * t * nh)
    drop = memplan.estimate("gpt2", attn_dropout=0.1, hidden_dropout=0.1, **base)
    nodrop = memplan.estimate("gpt2", attn_dropout=0.0, hidden_dropout=0.0, **base)
    g = memplan.load_model("gpt2")
    # CUDA: one bool mask byte per element after each residual branch (2 per block) and the embeddings;
    # SDPA draws the attention dropout in its kernel
    assert (drop.phases["forward"]["activations"] - nodrop.phases["forward"]["activations"]
            == (2 * g.num_hidden_layers + 1) * 4 * 1024 * g.hidden_size)
    assert memplan.estimate("gpt2", **base).to_dict()["config"]["hidden_dropout"] == 0.1  # the config's value


def test_masked_lm_loss_stays_in_bf16():
    e = memplan.estimate("roberta-base", batch_size=4, seq_len=512, attn_dropout=0.0)
    t, V = 4 * 512, 50265
    # no fp32 upcast: while the loss runs, the bf16 scores and their bf16 log-softmax
    assert e.phases["forward"]["temporaries"] == 2 * t * V


def test_explicit_head_dim_is_read():
    assert memplan.parameter_count(str(Path(__file__).parent / "data" / "mistral_nemo_12b.json")) == 12_247_782_400
    p = memplan.load_model(str(HF / "tiny_nemo.json"))
    assert (p.head_dim, p.q_dim, p.hidden_size) == (48, 192, 96)


def test_bundled_model_refuses_other_families():
    with pytest.raises(ValueError, match="LLaMA-style"):
        ValidateConfig(model="roberta-base", implementation="bundled")
    assert ValidateConfig(model="roberta-base").implementation == "hf"


def test_cli_options_and_header():
    from click.testing import CliRunner
    r = CliRunner().invoke(cli, ["estimate", "--model", "gpt2", "--method", "lora", "--rank", "8",
                                 "--attn", "eager", "--dropout", "0.05", "-b", "4", "-s", "512", "--json"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)["config"]
    assert (cfg["attn"], cfg["attn_dropout"], cfg["hidden_dropout"], cfg["lora_dropout"]) == ("eager", .05, .05, .05)
    r = CliRunner().invoke(cli, ["estimate", "--model", "gpt2", "--attn", "eager"])
    assert "eager attention, dropout attn 0.1 / hidden 0.1" in r.output.splitlines()[0]
    r = CliRunner().invoke(cli, ["estimate", "--model", "gpt2", "--attn-dropout", "1.5"])
    assert r.exit_code == 2 and r.output.startswith("Error: attn_dropout must be a probability")
    r = CliRunner().invoke(cli, ["validate", "--model", "roberta-base", "--bundled", "--device", "fake"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("Error: The bundled model is LLaMA")


def _peft_saved(family, lora_dropout, attn):
    """Saved activations of a peft LoRA step (fp32 adapters under a bf16 model) under FakeTensorMode."""
    peft = pytest.importorskip("peft")
    import transformers.masking_utils as mu
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memplan.measure.step import measure_step
    from memplan.models.hf import build_hf_model
    from memplan.inventory import resolve_targets
    p = memplan.load_model(str(HF / FAMILIES[family]))
    targets = list(resolve_targets(p, None))
    orig_packed, orig_to, old = mu.find_packed_sequence_indices, torch.nn.Module.to, torch.get_default_dtype()
    mu.find_packed_sequence_indices = lambda position_ids: None  # as on real tensors (see validate.py)
    try:
        with FakeTensorMode():
            m = build_hf_model(p, attn_implementation=attn)
            # fake tensors cannot be swapped by Module.to: peft's adapters are made in fp32 and stay
            # there, the dtype peft gives them under a bf16 base (autocast_adapter_dtype)
            torch.nn.Module.to = lambda self, *a, **k: self
            torch.set_default_dtype(torch.float32)
            m = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=lora_dropout,
                                                       target_modules=targets))
            torch.nn.Module.to = orig_to
            torch.set_default_dtype(old)
            assert {q.dtype for n, q in m.named_parameters() if "lora_" in n} == {torch.float32}
            m.train()
            opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], foreach=False)
            ids = torch.randint(0, p.vocab_size, (2, 24))
            measure_step(m, opt, {"input_ids": ids, "labels": ids.clone()})
            saved = measure_step(m, opt, {"input_ids": ids, "labels": ids.clone()}).saved
    finally:
        mu.find_packed_sequence_indices, torch.nn.Module.to = orig_packed, orig_to
        torch.set_default_dtype(old)
    est = memplan.estimate(p, "lora", impl="peft", rank=4, batch_size=2, seq_len=24, attn=attn,
                           lora_dropout=lora_dropout, kernels="cpu")
    return saved, est


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "roberta"])
@pytest.mark.parametrize("lora_dropout,attn", [(0.0, "sdpa"), (0.05, "sdpa"), (0.05, "eager")])
def test_peft_lora_activations(family, lora_dropout, attn):
    # peft gives lora_A an fp32 copy of each adapted input (and, with lora_dropout, the dropout's
    # output and mask); the frozen base keeps nothing, so the norm outputs that only adapted linears
    # read are no longer saved
    saved, est = _peft_saved(family, lora_dropout, attn)
    acts = est.phases["forward"]["activations"]
    assert acts == saved, (acts, saved)
