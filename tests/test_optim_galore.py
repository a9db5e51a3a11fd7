"""GaLoreAdamW against the reference galore-torch, and the projector's side rules."""
import warnings

import pytest
import torch

from memplan.optim import GaLoreAdamW
from memplan.optim.projector import choose_side, project, svd_projector




def _pair(shape, proj_type, wd, seed=0):
    torch.manual_seed(seed)
    W, b = torch.randn(*shape), torch.randn(shape[0])
    ours = [torch.nn.Parameter(W.clone()), torch.nn.Parameter(b.clone())]
    ref = [torch.nn.Parameter(W.clone()), torch.nn.Parameter(b.clone())]
    return ours, ref


@pytest.mark.parametrize("shape", [(48, 20), (20, 48)], ids=["right-side", "left-side"])
@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "left", "right"])
def test_matches_galore_torch_step_for_step(shape, proj_type):
    galore_torch = pytest.importorskip("galore_torch")
    ours, ref = _pair(shape, proj_type, wd=0.1)
    proj = dict(rank=4, update_proj_gap=3, scale=0.25, proj_type=proj_type)
    hp = dict(lr=0.01, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-6)
    opt = GaLoreAdamW([{"params": [ours[0]], **proj}, {"params": [ours[1]]}], **hp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_opt = galore_torch.GaLoreAdamW([{"params": [ref[0]], **proj}, {"params": [ref[1]]}], **hp)
    gen = torch.Generator().manual_seed(1)
    for step in range(10):  # refreshes at steps 0, 3, 6, 9
        grads = [torch.randn(*shape, generator=gen), torch.randn(shape[0], generator=gen)]
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"diverged at step {step}")
        P_ref = ref_opt.state[ref[0]]["projector"].ortho_matrix
        torch.testing.assert_close(opt.state[ours[0]]["projector"], P_ref, rtol=0, atol=0)
        torch.testing.assert_close(opt.state[ours[0]]["exp_avg"], ref_opt.state[ref[0]]["exp_avg"],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,side,P_shape,R_shape", [
    ((64, 16), "right", (4, 16), (64, 4)),
    ((16, 64), "left", (16, 4), (4, 64)),
])
def test_std_side_rule_shapes(shape, side, P_shape, R_shape):
    G = torch.randn(*shape)
    assert choose_side(shape, "std") == side
    P = svd_projector(G, 4, side)
    assert P.shape == P_shape and project(G, P, side).shape == R_shape
    # the projector is a compact copy, not a slice holding all of U or Vh alive
    assert P.untyped_storage().nbytes() == P.numel() * P.element_size()


def test_projector_spans_top_singular_subspace():
    U, _ = torch.linalg.qr(torch.randn(32, 32))
    V, _ = torch.linalg.qr(torch.randn(24, 24))
    S = torch.tensor([10.0, 8, 6, 4] + [0.01] * 20)
    G = U[:, :24] @ torch.diag(S) @ V.T  # (32, 24): rank-4 dominant
    P = svd_projector(G, 4, "right")  # (4, 24)
    torch.testing.assert_close(G @ P.T @ P, G, atol=0.05, rtol=0)


def test_bf16_projector_and_moments_follow_grad_dtype():
    p = torch.nn.Parameter(torch.randn(32, 16, dtype=torch.bfloat16))
    opt = GaLoreAdamW([{"params": [p], "rank": 4, "update_proj_gap": 2, "scale": 0.25}], lr=0.01)
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    assert st["projector"].dtype == st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.bfloat16
    assert st["step"].dtype == torch.float32 and st["step"].ndim == 0 and st["step"].item() == 1
    assert torch.isfinite(p).all()
