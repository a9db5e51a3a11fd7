"""GoLore: the paper's counterexample, the random projector, transport and the schedule."""
import pytest
import torch

from memplan.optim import GoLoreAdamW, GoLoreSGD
from memplan.optim.projector import random_projector, random_stiefel, transport




def _counterexample(golore_fraction, steps=2000, T=50, lr=0.01, seed=0):
    """ALGORITHMS.md: f(X) = 0.5 ||A X||^2 + <B, X>, noise +-I_r in the bottom-right block."""
    n, r = 10, 4
    gen = torch.Generator().manual_seed(seed)
    A = torch.cat([torch.eye(n - r), torch.zeros(n - r, r)], dim=1)
    AtA = A.T @ A
    B = torch.zeros(n, n)
    B[: n - r, : n - r] = torch.randn(n - r, n - r, generator=gen)
    X = torch.nn.Parameter(torch.zeros(n, n))
    opt = GoLoreSGD([{"params": [X], "rank": r, "update_proj_gap": T, "scale": 1.0, "proj_type": "left"}],
                    lr=lr, momentum=0.0, golore_fraction=golore_fraction, total_steps=steps, seed=seed)
    signs = torch.randint(0, 2, (steps,), generator=gen) * 2.0 - 1.0
    eye = torch.eye(r)
    norms = []
    for t in range(steps):
        true = AtA @ X.detach() + B
        grad = true.clone()
        grad[n - r:, n - r:] += signs[t] * eye  # mean-zero noise that dominates the top-r directions
        X.grad = grad
        opt.step()
        norms.append((AtA @ X.detach() + B).norm().item())
    return torch.tensor(norms)


def test_counterexample_galore_plateaus_golore_converges():
    galore = _counterexample(golore_fraction=0.0)  # SVD projector all along = GaLore with SGD steps
    golore = _counterexample(golore_fraction=1.0)  # random projector from step 0
    assert galore[0] > 1.0
    late_galore, late_golore = galore[-200:].mean(), golore[-200:].mean()
    # GaLore: the true gradient stops shrinking (plateau well above zero, flat in the second half)
    assert late_galore > 0.5
    assert galore[1000:1200].mean() / late_galore < 1.05
    # GoLore: falls by at least 10x more
    assert late_golore * 10 < late_galore, (late_galore, late_golore)


def test_random_stiefel_is_orthonormal_and_sign_fixed():
    Q = random_stiefel(50, 6, torch.empty(0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(Q.T @ Q, torch.eye(6), atol=1e-5, rtol=0)
    # the same Gaussian A = Q R' with R' upper triangular and a positive diagonal (the unique such QR)
    A = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    R = Q.T @ A
    torch.testing.assert_close(R, R.triu(), atol=1e-5, rtol=0)
    assert (torch.diagonal(R) > 0).all()


def test_random_stiefel_is_uniform_first_moment():
    # E[Q Q^T] = (r / n) I for a uniform frame; a biased sign convention would break isotropy of columns
    gen = torch.Generator().manual_seed(0)
    acc = torch.zeros(5, 5)
    col_mean = torch.zeros(5)
    for _ in range(800):
        Q = random_stiefel(5, 2, torch.empty(0), gen)
        acc += Q @ Q.T
        col_mean += Q[:, 0]
    torch.testing.assert_close(acc / 800, 0.4 * torch.eye(5), atol=0.05, rtol=0)
    assert col_mean.abs().max() / 800 < 0.06


@pytest.mark.parametrize("side,shape", [("left", (12, 30)), ("right", (30, 12))])
def test_random_projector_shape_and_reproducible(side, shape):
    a = random_projector(shape, 3, side, torch.empty(0), torch.Generator().manual_seed(5))
    b = random_projector(shape, 3, side, torch.empty(0), torch.Generator().manual_seed(5))
    assert a.shape == ((12, 3) if side == "left" else (3, 12))
    assert torch.equal(a, b)


@pytest.mark.parametrize("side", ["left", "right"])
def test_transport_matches_full_size_definition(side):
    m, n, r = 20, 16, 4
    P_old = random_projector((m, n), r, side, torch.empty(0), torch.Generator().manual_seed(1))
    P_new = random_projector((m, n), r, side, torch.empty(0), torch.Generator().manual_seed(2))
    M = torch.randn(r, n) if side == "left" else torch.randn(m, r)
    if side == "left":
        want = P_new.T @ (P_old @ M)
    else:
        want = (M @ P_old) @ P_new.T
    torch.testing.assert_close(transport(M, P_old, P_new, side), want, atol=1e-5, rtol=1e-5)
    # same subspace: transport is the identity
    torch.testing.assert_close(transport(M, P_old, P_old, side), M, atol=1e-5, rtol=1e-5)


def test_schedule_switches_from_svd_to_random_and_transports_first_moment():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(24, 10))
    opt = GoLoreAdamW([{"params": [p], "rank": 3, "update_proj_gap": 2, "scale": 1.0, "param_names": ["w"]}],
                      lr=1e-3, golore_fraction=0.5, total_steps=8)
    grads = [torch.randn(24, 10) for _ in range(8)]
    seen = []
    for t, g in enumerate(grads):
        p.grad = g
        before = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
        opt.step()
        st = opt.state[p]
        if t % 2 == 0:
            U, S, Vh = torch.linalg.svd(g, full_matrices=False)
            is_svd = torch.allclose(st["projector"], Vh[:3], atol=1e-6)
            seen.append(is_svd)
            if t > 0:  # exp_avg = beta1 * transported(old) + (1 - beta1) R
                carried = transport(before["exp_avg"], before["projector"], st["projector"], "right")
                R = g @ st["projector"].T
                torch.testing.assert_close(st["exp_avg"], 0.9 * carried + 0.1 * R, atol=1e-6, rtol=1e-5)
    assert seen == [True, True, False, False]  # switch at (1 - 0.5) * 8 = step 4


def test_golore_needs_total_steps_for_partial_schedule():
    p = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match="total_steps"):
        GoLoreAdamW([p], golore_fraction=0.2)
    with pytest.raises(ValueError, match="golore_fraction: 1.5"):
        GoLoreSGD([p], golore_fraction=1.5)
