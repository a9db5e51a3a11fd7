"""The bundled LLaMA model: HF parameter names and counts, checkpointing, LoRA wrapping."""
import dataclasses
import re

import pytest

torch = pytest.importorskip("torch")

import memplan  # noqa: E402
from memplan.models import apply_lora, build_model  # noqa: E402
from memplan.profiles import load_model  # noqa: E402

TINY = dataclasses.replace(load_model("llama-60m"), name="tiny-gqa", hidden_size=64, intermediate_size=176,
                           num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, vocab_size=1000)

HF_NAME = re.compile(r"^(model\.embed_tokens\.weight|model\.norm\.weight|lm_head\.weight|"
                     r"model\.layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight|"
                     r"model\.layers\.\d+\.self_attn\.[qkvo]_proj\.weight|"
                     r"model\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight)$")


def test_parameter_names_are_the_hf_names():
    model = build_model(TINY, dtype=torch.float32)
    names = [n for n, _ in model.named_parameters()]
    assert names and all(HF_NAME.match(n) for n in names), names


def test_shapes_match_the_inventory_exactly():
    model = build_model(TINY, dtype=torch.bfloat16)
    inv = {s.name: tuple(s.shape) for s in memplan.inventory(TINY)}
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == inv


@pytest.mark.parametrize("name", ["llama-60m", "llama-7b"])
def test_full_size_models_build_under_fake_mode(name):
    from torch._subclasses.fake_tensor import FakeTensorMode
    profile = load_model(name)
    with FakeTensorMode():
        model = build_model(profile, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == memplan.parameter_count(profile)


def test_hf_model_has_the_same_parameters():
    pytest.importorskip("transformers")
    from memplan.models.hf import build_hf_model
    ours = build_model(TINY, dtype=torch.float32)
    hf = build_hf_model(TINY, dtype=torch.float32)
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in hf.named_parameters()}


def test_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    a = build_model(TINY, dtype=torch.float32)
    b = build_model(TINY, dtype=torch.float32, checkpointing=True)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, TINY.vocab_size, (2, 16))
    la, lb = a(ids, labels=ids), b(ids, labels=ids)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb)
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_loss_matches_hf_formula_and_is_finite():
    model = build_model(TINY, dtype=torch.float32)
    ids = torch.randint(0, TINY.vocab_size, (2, 16))
    logits = model(ids)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, TINY.vocab_size), ids[:, 1:].reshape(-1))
    assert torch.allclose(model(ids, labels=ids), ref)


def test_lora_shapes_and_trainable_flags():
    model = apply_lora(build_model(TINY, dtype=torch.float32), 8, train_non_target=False)
    params = dict(model.named_parameters())
    q = "model.layers.0.self_attn.q_proj"
    assert params[q + ".lora_A"].shape == (8, 64) and params[q + ".lora_B"].shape == (64, 8)
    assert not params[q + ".weight"].requires_grad
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    # B starts at zero: the wrapped model computes the same function
    ids = torch.randint(0, TINY.vocab_size, (1, 8))
    assert torch.isfinite(model(ids, labels=ids))


def test_lowrank_drops_the_full_weight_and_lora_keeps_non_targets_trainable():
    model = apply_lora(build_model(TINY, dtype=torch.float32), 4, kind="lowrank")
    names = {n for n, _ in model.named_parameters()}
    assert "model.layers.0.mlp.up_proj.weight" not in names
    assert "model.layers.0.mlp.up_proj.lora_B" in names
    lora = apply_lora(build_model(TINY, dtype=torch.float32), 4, train_non_target=True)
    assert lora.lm_head.weight.requires_grad and lora.model.norm.weight.requires_grad


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind"):
        apply_lora(build_model(TINY, dtype=torch.float32), 4, kind="dora")
    with pytest.raises(ValueError, match="dtype"):
        build_model(TINY, dtype="fp8")
