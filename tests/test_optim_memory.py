"""Memory truth: bytes held in optimizer state, summed straight from the state tensors,
equal the estimator's optimizer_states and projectors exactly."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import memplan
from memplan.models import build_model
from memplan.optim import build_optimizer, optimizer_state_bytes
from memplan.optim.build import built_estimate_options
from memplan.profiles import model_from_config

METHODS = ["adamw", "sgd", "adafactor", "adam8bit", "galore", "galore8bit", "golore", "sumo", "gradnormlorp",
           "gradnormlorp8bit"]




DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

# a small GQA decoder (4 query heads share 2 kv heads): k/v projections are 64 x 256, so the left
# and right side rules and SUMO's larger-side projector all occur; 8-bit and fp32 small tensors too
SMALL_GQA = model_from_config({"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
                               "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 2,
                               "vocab_size": 1000, "max_position_embeddings": 256,
                               "tie_word_embeddings": False}, "small-gqa", "tests/test_optim_memory.py")


def _held_bytes(profile, method, precision, rank, layerwise=False):
    """Build the bundled model, take a refresh step and an ordinary step, sum the state."""
    model = build_model(profile, dtype=DTYPES[precision])
    opt = build_optimizer(model, method, rank=rank, update_gap=2, layerwise=layerwise, total_steps=100)
    for _ in range(2):  # step 0 refreshes the projectors, step 1 is ordinary
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-2
        if layerwise:
            for inner in opt.optimizers:
                inner.step()
        else:
            opt.step()
    return optimizer_state_bytes(opt)


def _estimated(profile, method, precision, rank, layerwise=False):
    est = memplan.estimate(profile, method, rank=rank, precision=precision, layerwise=layerwise,
                           **built_estimate_options(method))
    return {"optimizer_states": est.breakdown["optimizer_states"], "projectors": est.breakdown["projectors"]}


@pytest.mark.parametrize("method", METHODS)
def test_llama_60m_bf16_exact(method):
    with FakeTensorMode():  # the real optimizer code on fake tensors: same shapes, dtypes and storages
        got = _held_bytes("llama-60m", method, "bf16", rank=128)
    assert got == _estimated("llama-60m", method, "bf16", rank=128)


CASES = [(m, "bf16") for m in METHODS] + [(m, "fp32") for m in ("galore8bit", "gradnormlorp", "sumo", "adafactor")]


@pytest.mark.parametrize("method,precision", CASES)
def test_small_gqa_real_tensors_exact(method, precision):
    torch.manual_seed(0)
    got = _held_bytes(SMALL_GQA, method, precision, rank=16)
    assert got == _estimated(SMALL_GQA, method, precision, rank=16)


@pytest.mark.parametrize("method", ["galore", "sumo"])
def test_mistral_7b_gqa_exact(method):
    with FakeTensorMode():
        got = _held_bytes("mistral-7b", method, "bf16", rank=128)
    assert got == _estimated("mistral-7b", method, "bf16", rank=128)


@pytest.mark.parametrize("method", ["galore8bit", "adamw"])
def test_layerwise_state_is_the_same_bytes(method):
    torch.manual_seed(0)
    got = _held_bytes(SMALL_GQA, method, "bf16", rank=16, layerwise=True)
    assert got == _estimated(SMALL_GQA, method, "bf16", rank=16, layerwise=True)
