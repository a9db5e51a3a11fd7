"""SUMO: orthogonalized subspace update, moment transport, Newton-Schulz vs SVD, limiter."""
import math

import pytest
import torch

from memplan.optim import SUMO
from memplan.optim.projector import randomized_range
from memplan.optim.sumo import orthogonalize_newton_schulz, orthogonalize_svd




def _opt(p, **kw):
    group = {"params": [p], "rank": 4, "update_proj_gap": kw.pop("gap", 100), "scale": 1.0, "param_names": ["w"]}
    return SUMO([group], lr=0.01, **kw)


@pytest.mark.parametrize("shape", [(40, 16), (16, 40)])
def test_in_subspace_update_has_equal_singular_values(shape):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(*shape))
    opt = _opt(p, svd="exact", gamma=100.0)
    for _ in range(3):
        p.grad = torch.randn(*shape)
        W0 = p.detach().clone()
        opt.step()
        Q = opt.state[p]["projector"]  # (K, r)
        s = 0.01 * 1.0 * math.sqrt(max(shape))
        delta = (p.detach() - W0) / -s  # = Q O + (G - Q Q^T G)
        O = Q.T @ delta if shape[0] >= shape[1] else (delta @ Q).T  # project back onto the subspace
        sv = torch.linalg.svdvals(O)
        torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-4, rtol=0)
        # and the part outside the subspace is the raw gradient's
        G = p.grad if shape[0] >= shape[1] else p.grad.T
        D = delta if shape[0] >= shape[1] else delta.T
        torch.testing.assert_close(D - Q @ (Q.T @ D), G - Q @ (Q.T @ G), atol=1e-4, rtol=0)


def test_moment_transport_is_exact_when_subspace_is_unchanged():
    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(30, 4))
    p = torch.nn.Parameter(torch.randn(30, 12))
    opt = _opt(p, gap=1, svd="exact", momentum=0.9)  # refresh every step
    grads = [basis @ torch.randn(4, 12) for _ in range(4)]  # every gradient lives in span(basis)
    M_expected = torch.zeros(4, 12)
    for g in grads:
        p.grad = g
        opt.step()
        Q = opt.state[p]["projector"]
        # Q may flip signs or rotate within the span; the moment expressed in full space must be exact
        M_expected = 0.9 * M_expected + basis.T @ g
        torch.testing.assert_close(Q @ opt.state[p]["momentum"], basis @ M_expected, atol=1e-4, rtol=1e-4)


def test_newton_schulz_agrees_with_svd():
    torch.manual_seed(0)
    M = torch.randn(4, 64)
    exact, ns = orthogonalize_svd(M), orthogonalize_newton_schulz(M, steps=8)
    torch.testing.assert_close(ns, exact, atol=1e-3, rtol=0)
    torch.testing.assert_close(orthogonalize_newton_schulz(M.T, steps=8), exact.T, atol=1e-3, rtol=0)


def test_newton_schulz_option_trains_like_svd():
    torch.manual_seed(0)
    W = torch.randn(32, 16)
    runs = {}
    for mode in ("svd", "newton_schulz"):
        p = torch.nn.Parameter(W.clone())
        opt = _opt(p, svd="exact", orthogonalize=mode, ns_steps=10)
        gen = torch.Generator().manual_seed(3)
        for _ in range(3):
            p.grad = torch.randn(32, 16, generator=gen)
            opt.step()
        runs[mode] = p.detach()
    torch.testing.assert_close(runs["svd"], runs["newton_schulz"], atol=2e-3, rtol=0)


def test_norm_growth_limiter():
    p = torch.nn.Parameter(torch.randn(20, 8))
    opt = _opt(p, gamma=1.1)
    state = {"prev_norm": torch.tensor(1.0)}
    O = torch.eye(4, 8) * 3  # ||O|| = 6 > 1.1 * 1
    out = opt._limit_growth(O, state, {"gamma": 1.1})
    torch.testing.assert_close(out.norm(), torch.tensor(1.1))
    assert state["prev_norm"].item() == pytest.approx(1.1)
    state = {"prev_norm": torch.tensor(0.0)}  # first step: no limit
    torch.testing.assert_close(opt._limit_growth(O, state, {"gamma": 1.1}), O)


def test_randomized_range_finds_dominant_subspace():
    torch.manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(100, 5))
    G = U @ torch.diag(torch.tensor([50.0, 40, 30, 20, 10])) @ torch.randn(5, 60) / 8 + 0.01 * torch.randn(100, 60)
    Q = randomized_range(G, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(Q.T @ Q, torch.eye(5), atol=1e-5, rtol=0)
    U_exact = torch.linalg.svd(G, full_matrices=False)[0][:, :5]
    torch.testing.assert_close(Q @ (Q.T @ U_exact), U_exact, atol=1e-4, rtol=0)  # same span as the exact SVD
    torch.testing.assert_close(Q @ (Q.T @ U), U, atol=1e-2, rtol=0)  # ~ the planted subspace


def test_state_layout():
    p = torch.nn.Parameter(torch.randn(24, 10, dtype=torch.bfloat16))
    opt = _opt(p)
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    assert st["projector"].shape == (24, 4) and st["momentum"].shape == (4, 10)
    assert st["projector"].dtype == st["momentum"].dtype == torch.bfloat16
    assert st["prev_norm"].dtype == torch.float32 and st["prev_norm"].ndim == 0
