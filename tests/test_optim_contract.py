"""The torch.optim contract for every bundled optimizer: validation, lazy state,
state_dict round trip, closure, dtypes, and clear errors instead of NaN weights."""
import io
import warnings

import pytest
import torch

from memplan.optim import (SUMO, Adafactor, AdamW8bit, GaLoreAdamW, GaLoreAdamW8bit, GoLoreAdamW, GoLoreSGD,
                           GradNormLoRP, GradNormLoRP8bit)




PROJECTED = {
    "GaLoreAdamW": lambda g: GaLoreAdamW(g, lr=1e-2, weight_decay=0.01),
    "GaLoreAdamW8bit": lambda g: GaLoreAdamW8bit(g, lr=1e-2, weight_decay=0.01),
    "GoLoreAdamW": lambda g: GoLoreAdamW(g, lr=1e-2, golore_fraction=0.5, total_steps=8),
    "GoLoreSGD": lambda g: GoLoreSGD(g, lr=1e-2),
    "SUMO": lambda g: SUMO(g, lr=1e-2, weight_decay=0.01),
    "GradNormLoRP": lambda g: GradNormLoRP(g, lr=1e-2),
    "GradNormLoRP8bit": lambda g: GradNormLoRP8bit(g, lr=1e-2),
}
DENSE = {
    "AdamW8bit": lambda g: AdamW8bit(g, lr=1e-2),
    "Adafactor": lambda g: Adafactor(g, lr=1e-2, weight_decay=0.01),
}
ALL = {**PROJECTED, **DENSE}


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(128, 48, generator=gen).to(dtype))  # R = 128 x 32 = 4096: 8-bit moments
    b = torch.nn.Parameter(torch.randn(48, generator=gen).to(dtype))
    return W, b


def _groups(name, W, b):
    if name in DENSE:
        return [{"params": [W, b], "param_names": ["w", "b"]}]
    return [{"params": [W], "param_names": ["w"], "rank": 32, "update_proj_gap": 2, "scale": 0.25},
            {"params": [b], "param_names": ["b"]}]


def _grads(step, dtype):
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(128, 48, generator=gen).to(dtype), torch.randn(48, generator=gen).to(dtype)


def _run(opt, params, steps, start=0, dtype=torch.float32):
    for t in range(start, start + steps):
        for p, g in zip(params, _grads(t, dtype)):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_state_dict_round_trip_continues_identically(name, dtype):
    params = _params(dtype)
    opt = ALL[name](_groups(name, *params))
    _run(opt, params, 3, dtype=dtype)  # refreshes at 0 and 2
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    saved_params = [p.detach().clone() for p in params]
    _run(opt, params, 4, start=3, dtype=dtype)  # crosses refreshes at 4 and 6 (and GoLore's switch at 4)

    clones = [torch.nn.Parameter(p) for p in saved_params]
    fresh = ALL[name](_groups(name, *clones))
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    for key, value in fresh.state[clones[0]].items():  # saved dtypes survive (fp32 absmax, Adafactor...)
        if torch.is_tensor(value):
            assert value.dtype == opt.state[params[0]][key].dtype, key
    _run(fresh, clones, 4, start=3, dtype=dtype)
    for a, b in zip(params, clones):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(ALL))
def test_lazy_state_step_counter_and_closure(name):
    params = _params()
    opt = ALL[name](_groups(name, *params))
    assert len(opt.state) == 0
    calls = []

    def closure():
        calls.append(1)
        for p, g in zip(params, _grads(0, torch.float32)):
            p.grad = g
        return torch.tensor(1.5)

    assert opt.step(closure).item() == 1.5 and calls == [1]
    for p in params:
        step = opt.state[p]["step"]
        assert step.dtype == torch.float32 and step.ndim == 0 and step.item() == 1
        assert torch.isfinite(p).all()
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    opt.step()  # no gradients: nothing happens
    assert all(opt.state[p]["step"].item() == 1 for p in params)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_gradient_raises_naming_the_parameter(name, bad):
    params = _params()
    opt = ALL[name](_groups(name, *params))
    _run(opt, params, 1)  # also on an ordinary (non-refresh) step for projected weights
    before = params[0].detach().clone()
    g = torch.randn(128, 48)
    g[3, 4] = float(bad)
    params[0].grad, params[1].grad = g, torch.randn(48)
    with pytest.raises(ValueError, match="'w'"):
        opt.step()
    assert torch.equal(params[0], before)  # no NaN written into the weight


@pytest.mark.parametrize("name", sorted(PROJECTED))
def test_svd_failure_falls_back(name, monkeypatch):
    if name == "GoLoreSGD":
        pytest.skip("GoLore@100%: the projector is random from step 0, no SVD to fail")
    params = _params()
    opt = ALL[name](_groups(name, *params))
    _run(opt, params, 2)  # a projector exists

    def failing_svd(*a, **k):
        raise torch.linalg.LinAlgError("simulated: the algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing_svd)
    old_P = opt.state[params[0]]["projector"].clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(opt, params, 1, start=2)  # refresh step: both fp32 and fp64 fail -> previous projector kept
    assert any("keeping the previous projector" in str(w.message) for w in caught)
    assert torch.equal(opt.state[params[0]]["projector"], old_P)
    assert torch.isfinite(params[0]).all()
    # without a previous projector there is nothing to keep: a clear error naming the parameter
    fresh_params = _params()
    fresh = ALL[name](_groups(name, *fresh_params))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="'w'"):
            _run(fresh, fresh_params, 1)


def test_svd_retries_in_float64(monkeypatch):
    real_svd = torch.linalg.svd
    dtypes = []

    def flaky_svd(A, *a, **k):
        dtypes.append(A.dtype)
        if A.dtype == torch.float32:
            raise torch.linalg.LinAlgError("simulated")
        return real_svd(A, *a, **k)

    monkeypatch.setattr(torch.linalg, "svd", flaky_svd)
    params = _params()
    opt = GaLoreAdamW(_groups("GaLoreAdamW", *params), lr=1e-2)
    with pytest.warns(UserWarning, match="retrying in float64"):
        _run(opt, params, 1)
    assert dtypes == [torch.float32, torch.float64]
    assert opt.state[params[0]]["projector"].dtype == torch.float32


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1.0), "learning rate: -1.0"),
    (dict(betas=(1.0, 0.999)), "beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), "beta parameter at index 1: -0.1"),
    (dict(eps=-1e-8), "epsilon value: -1e-08"),
    (dict(weight_decay=-0.1), "weight_decay value: -0.1"),
])
@pytest.mark.parametrize("cls", [GaLoreAdamW, GaLoreAdamW8bit, GoLoreAdamW, SUMO, GradNormLoRP, AdamW8bit])
def test_hyperparameter_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.nn.Parameter(torch.randn(4, 4))], **kwargs)


@pytest.mark.parametrize("entry,match", [
    (dict(rank=0), "rank: 0"), (dict(rank=2.5), "rank: 2.5"), (dict(update_proj_gap=0), "update_proj_gap: 0"),
    (dict(scale=-1.0), "scale: -1.0"), (dict(proj_type="diagonal"), "proj_type: 'diagonal'"),
])
def test_projection_group_validation(entry, match):
    group = {"params": [torch.nn.Parameter(torch.randn(8, 4))], "rank": 2, **entry}
    with pytest.raises(ValueError, match=match):
        GaLoreAdamW([group])


def test_projected_group_refuses_non_matrix_with_its_name():
    group = {"params": [torch.nn.Parameter(torch.randn(8))], "param_names": ["norm.weight"], "rank": 2}
    with pytest.raises(ValueError, match="'norm.weight'"):
        GaLoreAdamW([group])


@pytest.mark.parametrize("cls,kw,match", [
    (SUMO, dict(gamma=0.5), "gamma: 0.5"), (SUMO, dict(svd="qr"), "svd: 'qr'"),
    (SUMO, dict(orthogonalize="polar"), "orthogonalize: 'polar'"), (GoLoreSGD, dict(momentum=1.0), "momentum value: 1.0"),
    (Adafactor, dict(beta1=1.2), "beta1: 1.2"), (Adafactor, dict(decay_rate=0.5), "decay_rate: 0.5"),
])
def test_method_specific_validation(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.nn.Parameter(torch.randn(4, 4))], **kw)


def test_dense_only_optimizers_refuse_projected_groups():
    for cls in (AdamW8bit, Adafactor):
        with pytest.raises(ValueError, match="rank=4"):
            cls([{"params": [torch.nn.Parameter(torch.randn(8, 8))], "rank": 4}])


def test_adafactor_state_is_fp32_and_factored():
    W = torch.nn.Parameter(torch.randn(12, 7, dtype=torch.bfloat16))
    v = torch.nn.Parameter(torch.randn(7, dtype=torch.bfloat16))
    opt = Adafactor([W, v], lr=1e-2)
    W.grad, v.grad = torch.randn_like(W), torch.randn_like(v)
    opt.step()
    sw, sv = opt.state[W], opt.state[v]
    assert sw["exp_avg_sq_row"].shape == (12,) and sw["exp_avg_sq_col"].shape == (7,)
    assert sw["exp_avg"].shape == (12, 7) and sv["exp_avg_sq"].shape == (7,) and sv["exp_avg"].shape == (7,)
    assert all(t.dtype == torch.float32 for s in (sw, sv) for t in s.values())
    no_m = Adafactor([torch.nn.Parameter(torch.randn(3, 3))], beta1=None)
    p = no_m.param_groups[0]["params"][0]
    p.grad = torch.randn(3, 3)
    no_m.step()
    assert "exp_avg" not in no_m.state[p]


def test_adafactor_first_step_is_clipped_sign_like():
    """With one step, V_hat = G^2 (+eps1) exactly for rank-1 G^2, so U = sign(G) (RMS 1, no clip)."""
    u, w = torch.rand(6) + 0.5, torch.rand(5) + 0.5
    G = torch.outer(u, w) * torch.sign(torch.randn(6, 5))
    p = torch.nn.Parameter(torch.zeros(6, 5))
    opt = Adafactor([p], lr=0.1, beta1=None)
    p.grad = G
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * torch.sign(G), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(ALL))
def test_cuda_step_matches_cpu(name):
    cpu = _params()
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    opt_cpu, opt_gpu = ALL[name](_groups(name, *cpu)), ALL[name](_groups(name, *gpu))
    for t in range(2):  # one refresh: SVD signs may differ by device, harmless within one subspace
        grads = _grads(t, torch.float32)
        for p, q, g in zip(cpu, gpu, grads):
            p.grad, q.grad = g, g.cuda()
        opt_cpu.step()
        opt_gpu.step()
    for key, value in opt_gpu.state[gpu[0]].items():
        if torch.is_tensor(value) and key != "step":
            assert value.is_cuda, key
    if name not in ("GoLoreAdamW", "GoLoreSGD", "SUMO"):  # device generators draw different random numbers
        for p, q in zip(cpu, gpu):
            torch.testing.assert_close(q.cpu(), p.detach(), atol=1e-3, rtol=1e-3)
