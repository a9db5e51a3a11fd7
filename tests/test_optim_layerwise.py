"""Per-layer weight update: same result as a normal optimizer, refusals, state_dict,
and a measured peak of live gradient bytes of about one parameter."""
import copy
import weakref
from types import SimpleNamespace

import pytest
import torch

from memplan.models import build_model
from memplan.optim import GaLoreAdamW, GradNormLoRP8bit, LayerwiseOptimizer, build_optimizer, projected_param_groups

CFG = SimpleNamespace(name="tiny", hidden_size=64, intermediate_size=160, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=128)




def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(CFG, dtype=torch.float32)


def _batch(step):
    gen = torch.Generator().manual_seed(step)
    return torch.randint(0, CFG.vocab_size, (2, 16), generator=gen)


def _train(model, opt, steps, start=0):
    for t in range(start, start + steps):
        ids = _batch(t)
        model(ids, labels=ids).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("factory", [
    lambda groups: (GaLoreAdamW, dict(lr=1e-2)),
    lambda groups: (GradNormLoRP8bit, dict(lr=1e-2)),
    lambda groups: (torch.optim.AdamW, dict(lr=1e-2, foreach=False)),
], ids=["GaLoreAdamW", "GradNormLoRP8bit", "torch.AdamW"])
def test_same_weights_as_the_normal_optimizer(factory):
    a, b = _model(), _model()
    cls, kw = factory(None)
    opt_a = cls(projected_param_groups(a, rank=8, update_proj_gap=2), **kw)
    opt_b = LayerwiseOptimizer(projected_param_groups(b, rank=8, update_proj_gap=2), cls, **kw)
    _train(a, opt_a, 3)
    _train(b, opt_b, 3)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)


def test_refuses_gradient_accumulation_and_global_clipping():
    model = _model()
    with pytest.raises(ValueError, match="gradient_accumulation_steps=4"):
        LayerwiseOptimizer(model.parameters(), torch.optim.AdamW, gradient_accumulation_steps=4)
    with pytest.raises(ValueError, match="max_grad_norm=1.0"):
        LayerwiseOptimizer(model.parameters(), torch.optim.AdamW, max_grad_norm=1.0)
    build_optimizer(model, "galore", rank=8, update_gap=2, layerwise=True)  # hooks live on the parameters
    ids = _batch(0)
    model(ids, labels=ids).backward()
    with pytest.raises(RuntimeError, match="'lm_head.weight' received a second gradient before step"):
        model(ids, labels=ids).backward()  # a second micro-batch without step(): accumulation


def test_state_dict_saves_and_restores():
    a = _model()
    opt = LayerwiseOptimizer(projected_param_groups(a, rank=8, update_proj_gap=2), GaLoreAdamW, lr=1e-2)
    _train(a, opt, 3)
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(opt.state_dict())
    _train(a, opt, 3, start=3)

    b = _model(seed=1)
    b.load_state_dict(saved_model)
    opt_b = LayerwiseOptimizer(projected_param_groups(b, rank=8, update_proj_gap=2), GaLoreAdamW, lr=1e-2)
    opt_b.load_state_dict(saved_opt)
    _train(b, opt_b, 3, start=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="per-parameter optimizers"):
        opt_b.load_state_dict({"optimizers": saved_opt["optimizers"][:2]})


def _peak_live_grad_bytes(model, make_opt):
    """Backward once; at every gradient-ready hook, sum the bytes of gradients still alive
    (tracked by weak references, so a gradient counts until its memory is released)."""
    live = []
    peak = [0]

    def measure(p):
        live.append((weakref.ref(p.grad), p.grad.numel() * p.grad.element_size()))
        peak[0] = max(peak[0], sum(nbytes for ref, nbytes in live if ref() is not None))

    handles = [p.register_post_accumulate_grad_hook(measure) for p in model.parameters()]  # run first
    opt = make_opt(model)
    ids = _batch(0)
    model(ids, labels=ids).backward()
    opt.step()
    for h in handles:
        h.remove()
    return peak[0]


def test_peak_live_gradient_bytes_is_about_one_parameter():
    total = sum(p.numel() * 4 for p in _model().parameters())
    largest = max(p.numel() * 4 for p in _model().parameters())
    normal = _peak_live_grad_bytes(_model(), lambda m: build_optimizer(m, "galore", rank=8, update_gap=2))
    layerwise = _peak_live_grad_bytes(
        _model(), lambda m: build_optimizer(m, "galore", rank=8, update_gap=2, layerwise=True))
    assert normal == total  # every gradient is alive when backward ends
    assert layerwise <= largest  # one gradient at a time, freed right after its update
    assert layerwise < total / 4


@pytest.mark.parametrize("method", ["galore8bit", "sumo"])
def test_layerwise_runs_under_fake_tensors_with_real_bytes(method):
    """The measurement path: per-layer updates inside backward on fake tensors hold the same state bytes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memplan.optim import optimizer_state_bytes

    def run():
        model = build_model(CFG, dtype=torch.bfloat16)
        opt = build_optimizer(model, method, rank=8, update_gap=2, layerwise=True)
        for t in range(3):  # refresh, ordinary, refresh
            ids = torch.randint(0, CFG.vocab_size, (2, 8))
            model(ids, labels=ids).backward()
            opt.step()
        assert all(s["step"].item() == 3 for s in opt.state.values())
        return optimizer_state_bytes(opt)

    with FakeTensorMode():
        fake = run()
    assert fake == run()
