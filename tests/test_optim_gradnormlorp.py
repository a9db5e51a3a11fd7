"""GradNormLoRP: weight-norm gradients against autograd, state without a second weight copy."""
import pytest
import torch
from torch.nn.utils.parametrizations import weight_norm

from memplan.optim import GradNormLoRP, GradNormLoRP8bit, weight_norm_grads
from memplan.optim.gradnormlorp import _row_dot




@pytest.mark.parametrize("same_norm", [True, False], ids=["g=||V||", "general-g"])
def test_gradients_equal_autograd_through_weight_norm(same_norm):
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 7, bias=False)
    layer = weight_norm(layer, dim=0)
    V = layer.parametrizations.weight.original1
    g = layer.parametrizations.weight.original0  # (7, 1)
    if not same_norm:
        with torch.no_grad():
            g.mul_(torch.rand_like(g) + 0.5)
    x = torch.randn(5, 12)
    target = torch.randn(5, 7)
    loss = ((layer(x) - target) ** 2).sum()
    loss.backward()
    # dL/dW for the plain layer with the same effective weight
    W = layer.weight.detach().clone().requires_grad_(True)
    ((x @ W.T - target) ** 2).sum().backward()
    dg, dV = weight_norm_grads(V.detach(), g.detach().view(-1), W.grad)
    torch.testing.assert_close(dg, g.grad.view(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dV, V.grad, atol=1e-5, rtol=1e-5)


def test_row_dot_is_rowwise_product():
    a, b = torch.randn(6, 9), torch.randn(6, 9)
    torch.testing.assert_close(_row_dot(a, b), (a * b).sum(1))


@pytest.mark.parametrize("cls", [GradNormLoRP, GradNormLoRP8bit])
@pytest.mark.parametrize("shape", [(64, 96), (96, 64)])
def test_step_keeps_magnitude_and_no_full_size_state(cls, shape):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(*shape))
    opt = cls([{"params": [p], "rank": 8, "update_proj_gap": 2, "scale": 0.25}], lr=0.01, weight_decay=0.01)
    for _ in range(3):
        p.grad = torch.randn(*shape)
        opt.step()
    st = opt.state[p]
    # W = g * V / ||V||: the rows of W have norm g exactly
    torch.testing.assert_close(p.detach().norm(dim=1), st["magnitude"], atol=1e-4, rtol=1e-4)
    m = shape[0]
    for key in ("magnitude", "magnitude_exp_avg", "magnitude_exp_avg_sq"):
        assert st[key].shape == (m,)
    biggest = max(v.numel() for v in st.values() if torch.is_tensor(v))
    assert biggest < p.numel() // 4  # nothing close to a second copy of W


def test_low_rank_projection_matches_explicit_dV():
    """The ordinary-step projection formed from G and W equals P^T dL/dV."""
    torch.manual_seed(0)
    for shape in [(40, 16), (16, 40)]:
        p = torch.nn.Parameter(torch.randn(*shape))
        opt = GradNormLoRP([{"params": [p], "rank": 4, "update_proj_gap": 100, "scale": 1.0}], lr=0.0,
                           betas=(0.0, 0.999), correct_bias=False, eps=0.0)
        p.grad = torch.randn(*shape)
        opt.step()  # lr 0: W unchanged; exp_avg (beta1 = 0) = R
        st = opt.state[p]
        _, dV = weight_norm_grads(p.detach(), st["magnitude"], p.grad)
        P = st["projector"]
        R = dV @ P.T if st["side"] == "right" else P.T @ dV
        torch.testing.assert_close(st["exp_avg"], R, atol=1e-5, rtol=1e-4)
