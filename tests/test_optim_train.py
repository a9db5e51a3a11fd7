"""Every method lowers the loss of the bundled LLaMA-style model on a synthetic
next-token task within a few dozen steps; the projection groups follow the estimator."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from memplan.models import build_model
from memplan.optim import (DEFAULT_TARGET_MODULES, METHODS, build_optimizer, infer_family, is_target,
                           projected_param_groups)




CFG = SimpleNamespace(name="tiny", hidden_size=48, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=48)
LR = {"adamw": 3e-3, "adam8bit": 3e-3, "adafactor": 1e-2, "sgd": 0.3, "lora": 3e-3, "relora": 3e-3,
      "lowrank": 3e-3, "galore": 1e-2, "galore8bit": 1e-2, "golore": 1e-2, "sumo": 1e-2, "gradnormlorp": 1e-2,
      "gradnormlorp8bit": 1e-2}


def _data(batch=8, length=16):
    """x_{t+1} = (5 x_t + 3) mod V: a deterministic next-token rule the model must learn."""
    gen = torch.Generator().manual_seed(0)
    x = [torch.randint(0, CFG.vocab_size, (batch, 1), generator=gen)]
    for _ in range(length - 1):
        x.append((5 * x[-1] + 3) % CFG.vocab_size)
    return torch.cat(x, dim=1)


@pytest.mark.parametrize("layerwise", [False, True], ids=["normal", "layerwise"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_lowers_the_loss(method, layerwise):
    if layerwise and method not in ("adamw", "galore", "galore8bit", "golore", "sumo", "gradnormlorp"):
        pytest.skip("layerwise variants: a representative subset")
    torch.manual_seed(0)
    model = build_model(CFG, dtype=torch.float32)
    opt = build_optimizer(model, method, rank=8, update_gap=10, lr=LR[method], layerwise=layerwise,
                          total_steps=25)
    ids = _data()
    losses = []
    for _ in range(25):
        loss = model(ids, labels=ids)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])


def test_bf16_training_runs_and_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model(CFG, dtype=torch.bfloat16)
    opt = build_optimizer(model, "galore", rank=8, update_gap=10, lr=1e-2)
    ids = _data()
    first = None
    for _ in range(15):
        loss = model(ids, labels=ids)
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.8 * first
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_projected_groups_split_like_the_estimator():
    model = build_model(CFG, dtype=torch.float32)
    proj, other = projected_param_groups(model, rank=8)
    assert proj["rank"] == 8 and proj["update_proj_gap"] == 200 and proj["scale"] == 0.25
    assert len(proj["params"]) == len(proj["param_names"]) == 7 * CFG.num_hidden_layers
    assert all(n.endswith(("_proj.weight",)) for n in proj["param_names"])
    assert set(other["param_names"]) == {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                                         *(f"model.layers.{i}.{k}.weight" for i in range(2)
                                           for k in ("input_layernorm", "post_attention_layernorm"))}
    only_qv = projected_param_groups(model, rank=8, target_modules=["q_proj", "v_proj"])[0]
    assert len(only_qv["params"]) == 2 * CFG.num_hidden_layers
    with pytest.raises(ValueError, match="None of the target modules"):
        projected_param_groups(model, rank=8, target_modules=["query"])


def test_default_targets_match_the_estimator():
    from memplan.inventory import DEFAULT_TARGET_MODULES as estimator_targets
    assert DEFAULT_TARGET_MODULES == estimator_targets


def test_is_target_matches_at_dot_boundaries():
    assert is_target("model.layers.0.self_attn.q_proj", ["q_proj"])
    assert not is_target("model.layers.0.self_attn.xq_proj", ["q_proj"])
    assert is_target("bert.encoder.layer.0.attention.output.dense", ["attention.output.dense"])
    assert is_target("bert.encoder.layer.0.output.dense", ["output.dense"])
    assert not is_target("bert.encoder.layer.0.output.dense_x", ["output.dense"])


def test_family_inference():
    class Bertish(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    class Optish(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.out_proj, self.fc1 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    assert infer_family(build_model(CFG, dtype=torch.float32)) == "llama"
    assert infer_family(Bertish()) == "bert" and infer_family(Optish()) == "opt"
    with pytest.raises(ValueError, match="target_modules"):
        infer_family(nn.Sequential(nn.Linear(3, 3)))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="Unknown method 'galore2'.*galore8bit"):
        build_optimizer(build_model(CFG, dtype=torch.float32), "galore2")
