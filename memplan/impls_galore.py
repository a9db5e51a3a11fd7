"""galore-torch 1.0 (`galore_torch.GaLoreAdamW`, `GaLoreAdamW8bit`): its memory, read from its source.

galore-torch steps the parameters in a Python loop whose locals outlive the iteration:
`denom` and `norm_grad` of parameter i are still alive while parameter i+1 computes its
own, so a step's transients depend on the order of the parameters. The GaLore recipes
(`torchrun_main.py`, the README) pass the non-projected parameters first, then the
projected ones; the walk below follows that order. Per projected weight (m, n), r, k, K
as in methods.py, `s` the gradient's bytes:

- refresh (`GaLoreProjector.get_orthogonal_matrix`): the fp32 copy of G (none when G is
  fp32), `U, S, Vh = svd(.)`, `A = U[:, :r] @ diag(S[:r])` (or `diag @ Vh[:r]`: 4 r K) and
  the new projector cast to the gradient dtype. In fp32 the projector is a *view* of U or
  Vh, so it keeps the whole k x k factor alive: the projector state is `4 k k`, not `4 r k`.
- step: `R = P^T G` (r K), `denom` (r K), `exp_avg / denom` (r K), then `project_back`
  returns `(P^T N) * scale`: two m x n tensors alive at once.
- non-projected parameters: `denom` and `exp_avg / denom`, full size, both kept.

Moments and the projector follow the gradient dtype; `state["step"]` is a Python int.
The 8-bit variant (`GaLoreAdamW8bit`) runs bitsandbytes' kernel on R and, per projected
weight, clones the weight (`p.saved_data = p.data.clone()`), swaps `p.data` for a copy
of R and sets `p.grad = R`, which frees the full gradient of that weight.
"""
from __future__ import annotations

from collections.abc import Sequence

from memplan.impls import Impl, Knobs, register
from memplan.methods import Shape, _up
from memplan.quant import moment8_bytes


def _projector(t: Shape, r: int, s: int) -> int:
    return 4 * t.k * t.k if s == 4 else r * t.k * s  # fp32: a view keeps the whole U or Vh


def _state(t: Shape, r: int, s: int, o: Knobs) -> tuple[int, int]:
    if not t.projected:
        return 2 * t.numel * s, 0
    return 2 * r * t.K * s, _projector(t, r, s)


# galore-torch 1.0 passes percentile_clipping=100 by position; bitsandbytes 0.50 reads that slot as
# max_unorm, so every tensor gets a 1-element fp32 unorm_vec
UNORM = 4


def _state8(t: Shape, r: int, s: int, o: Knobs) -> tuple[int, int]:
    if not t.projected:
        return moment8_bytes(t.numel) + UNORM, 0
    return moment8_bytes(r * t.K) + UNORM, _projector(t, r, s)


def _svd(t: Shape, r: int, s: int) -> int:
    """get_orthogonal_matrix's peak: fp32 G, U, S, Vh, the r-column product and the new projector."""
    new_proj = 0 if s == 4 else r * t.k * s  # fp32: a view of U / Vh, already counted
    return _up(t.numel, s) + 4 * (t.m * t.k + t.k + t.k * t.n) + 4 * r * t.K + 4 * r * r + new_proj


def _walk(shapes: Sequence[Shape], r: int, s: int, refresh: bool) -> int:
    """GaLoreAdamW: the largest transient of one step, over the parameters in step order."""
    peak = 0
    denom = ng = 0  # the previous iteration's `denom` and `norm_grad`, alive until reassigned
    for t in shapes:
        N = t.numel * s
        if not t.projected:
            peak = max(peak, denom + ng + N)  # the new denom next to the previous locals
            peak = max(peak, ng + 2 * N)  # exp_avg / denom before the previous norm_grad goes
            denom, ng = N, N
            continue
        low = r * t.K * s
        if refresh:
            peak = max(peak, denom + ng + _svd(t, r, s))
        peak = max(peak, denom + ng + 2 * low)  # R and the new denom
        peak = max(peak, ng + 3 * low)  # R, denom and exp_avg / denom before the previous norm_grad goes
        peak = max(peak, 3 * low + 2 * N)  # project_back: the product and its scaled copy
        denom, ng = low, N  # `grad` (R) goes at the next iteration's start
    return peak


def _walk8(shapes: Sequence[Shape], r: int, s: int, refresh: bool) -> int:
    """GaLoreAdamW8bit on CUDA (bitsandbytes updates in place): the largest transient, in step order.

    Per projected weight: R (r K), the weight clone (m n), p.data swapped for a copy of R (the old
    weight storage goes), p.grad = R (the full gradient goes), then project_back's two m n tensors.
    Each stepped weight leaves R behind as its gradient, in place of the full one.
    """
    peak = 0
    offset = 0  # bytes the weights stepped so far have freed (full gradient - R) below the step's start
    for t in shapes:
        if not t.projected:
            continue
        N, low = t.numel * s, r * t.K * s
        if refresh:
            peak = max(peak, offset + _svd(t, r, s))
        # R, the clone, p.data = a copy of R (the weight's storage goes), p.grad = R (the gradient
        # goes), then project_back's two m x n: the most at once is R, its copy, the clone and one more
        peak = max(peak, offset + 2 * low + N)
        offset += low - N
    return max(peak, 0)


def _step_all(shapes, r, s, o):
    return _walk(shapes, r, s, refresh=False)


def _refresh_all(shapes, r, s, o):
    return _walk(shapes, r, s, refresh=True)


def _one(t: Shape, r: int, s: int, o: Knobs) -> int:
    return _walk([t], r, s, refresh=False)


def _one_refresh(t: Shape, r: int, s: int, o: Knobs) -> int:
    return _walk([t], r, s, refresh=True)


register(Impl("galore", "galore-torch", "galore-torch 1.0 galore_torch.GaLoreAdamW",
              "the authors' code: full-size locals kept across parameters; two m x n on project_back",
              _state, _one, _one_refresh, sequence_temp=_step_all, sequence_refresh=_refresh_all,
              regular_first=True, checked_by="validate --impl galore-torch"))
register(Impl("galore8bit", "galore-torch", "galore-torch 1.0 galore_torch.GaLoreAdamW8bit on bitsandbytes 0.50.2",
              "the authors' code: clones each projected weight; frees each full gradient as it goes",
              _state8, lambda t, r, s, o: _walk8([t], r, s, False), lambda t, r, s, o: _walk8([t], r, s, True),
              sequence_temp=lambda sh, r, s, o: _walk8(sh, r, s, False),
              sequence_refresh=lambda sh, r, s, o: _walk8(sh, r, s, True),
              regular_first=True, qmaps_per_optimizer=True, checked_by="validate --impl galore-torch"))
