"""The libraries behind QLoRA, Q-GaLore, APOLLO, APOLLO-Mini and Fira, run on CPU tensors.

`build(method, impl, weight, rank)` makes the library's optimizer for one weight the way
its authors' scripts set it up; `step_bytes(...)` runs steps and measures, with memplan's
tracker, the optimizer state and the transient bytes of a step (its peak above what was
alive before it: the weight, its gradient and the state). tests/test_recent_methods.py
compares both with the rules in memplan/rules_recent.py.

Shims, the smallest that let the published code run here:
- q-galore-torch 1.0 and apollo-torch's QAPOLLOAdamW were written against an older
  bitsandbytes: their `update_step` reads `config["percentile_clipping"]` (bitsandbytes 0.50
  no longer puts it in the config: we add 100, "no clipping", their default), and they pass
  `percentile_clipping=100` positionally where bitsandbytes 0.50 now takes `max_unorm`, which
  would add a 4-byte `unorm_vec` per tensor: we set `max_unorm` back to their 0. q-galore's
  `update_step` calls bitsandbytes' 8-bit kernel with the old argument order: ours calls the
  same kernel with 0.50's order (the state it touches is the same).
- Both call `torch.cuda.synchronize()` unconditionally: a no-op without CUDA.
- INT8 weights: Q-GaLore's `QLinear` lives in its repository, not in the package. A weight is
  made the way its optimizer re-quantizes one (`_quantize`, groups of 256): uint8 codes with
  `scales`, `zeros`, `group_size`, `stochastic_round` and the bf16 gradient in `float_grad`.
"""
from __future__ import annotations

import contextlib

import torch

from memplan.measure.tracker import MemoryTracker, state_bytes

INT8_GROUP = 256


@contextlib.contextmanager
def no_cuda_sync():
    """torch.cuda.synchronize() as a no-op when there is no CUDA (the libraries call it anyway)."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.synchronize = saved


def _qgalore_class():
    import bitsandbytes.functional as F
    from q_galore_torch.q_galore_adamw8bit import AdamW8bit

    class QGaLoreAdamW8bit(AdamW8bit):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.args.max_unorm = 0.0  # q-galore's positional percentile_clipping=100 lands on max_unorm

        def get_config(self, gindex, pindex, group):
            return {**super().get_config(gindex, pindex, group), "percentile_clipping": 100, "block_wise": True}

        @torch.no_grad()
        def update_step(self, group, p, gindex, pindex, flag_use_float_grad=False):
            state = self.state[p]
            grad = p.float_grad if flag_use_float_grad else p.grad
            c = self.get_config(gindex, pindex, group)
            state["step"] += 1
            b1, b2 = c["betas"][:2]
            if state["state1"].dtype == torch.float:
                F.optimizer_update_32bit("adam", grad, p, state["state1"], b1, c["eps"], state["step"], c["lr"],
                                         state["state2"], b2, 0.0, 0.0, c["weight_decay"], 1.0, None)
            else:
                F.optimizer_update_8bit_blockwise("adam", grad, p, state["state1"], state["state2"], b1, b2, 0.0, 0.0,
                                                  c["eps"], state["step"], c["lr"], state["qmap1"], state["qmap2"],
                                                  state["absmax1"], state["absmax2"], c["weight_decay"])

    return QGaLoreAdamW8bit


def _qapollo_class():
    from apollo_torch import QAPOLLOAdamW

    class QAPOLLO(QAPOLLOAdamW):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.args.max_unorm = 0.0

        def get_config(self, gindex, pindex, group):
            return {**super().get_config(gindex, pindex, group), "percentile_clipping": 100, "block_wise": True}

    return QAPOLLO


def _apollo_group(mini: bool, rank: int, gap: int) -> dict:
    # apollo-torch's README: APOLLO rank 256 (channel), APOLLO-Mini rank 1, tensor-wise, scale 128
    return {"rank": 1 if mini else rank, "proj": "random", "scale_type": "tensor" if mini else "channel",
            "scale": 128 if mini else 1, "update_proj_gap": gap, "proj_type": "std"}


def build(method: str, impl: str, params, rank: int, gap: int = 200, projected: bool = True, regular=()):
    """The library optimizer of `method` / `impl` over `params` (projected: in the low-rank group);
    `regular`: parameters without projection, in a first group, as the authors' scripts list them."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    params = list(params)
    lowrank = {}
    if method in ("apollo", "apollo-mini"):
        lowrank = _apollo_group(method == "apollo-mini", rank, gap)
        cls = _qapollo_class() if impl == "q-apollo" else __import__("apollo_torch").APOLLOAdamW
        kw = {"lr": 1e-3, "weight_decay": 0.0}
    elif method == "fira":
        from fira import FiraAdamW as cls

        lowrank = {"rank": rank, "update_proj_gap": gap, "alpha": 0.25, "proj_type": "std"}
        kw = {"lr": 1e-3, "no_deprecation_warning": True}
    elif method == "qgalore":
        cls = _qgalore_class()
        # q-galore's scripts: --proj_quant --proj_bits 4 --proj_group_size 256, lazy-update defaults
        lowrank = {"rank": rank, "update_proj_gap": gap, "scale": 0.25, "proj_type": "std", "quant": True,
                   "quant_group_size": 256, "quant_n_bit": 4, "cos_threshold": 0.4, "gamma_proj": 2, "queue_size": 5}
        kw = {"lr": 1e-3, "weight_decay": 0.0}
    elif method == "qlora":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=1e-4)
    else:
        raise ValueError(f"no library for {method!r}")
    group = {"params": params, **lowrank} if projected else {"params": params}
    regular = list(regular)
    return cls(([{"params": regular}] if regular else []) + [group], **kw)


def int8_weight(full: torch.Tensor, stochastic_round: bool = False) -> torch.nn.Parameter:
    """A weight as Q-GaLore / Q-APOLLO keep it: uint8 codes, per-group scale and zero point."""
    from q_galore_torch.q_galore_adamw8bit import AdamW8bit

    codes, scales, zeros = AdamW8bit._quantize(None, full, q_group_size=INT8_GROUP)
    w = torch.nn.Parameter(codes, requires_grad=False)
    w.group_size, w.scales, w.zeros, w.stochastic_round = INT8_GROUP, scales, zeros, stochastic_round
    return w


def step_bytes(opt, weight: torch.nn.Parameter, make_grad, steps: int = 3) -> list[tuple[dict, int]]:
    """Per step: (optimizer state bytes by category, transient peak of the step in bytes).

    The transient peak is the step's highest total minus what was alive when it started
    (weight, gradient, state): storages the library frees during the step (Q-GaLore swaps
    the weight and its gradient for the projected gradient) count against it.
    """
    out = []
    int8 = hasattr(weight, "group_size")
    with no_cuda_sync():
        for _ in range(steps):
            # the gradient is referenced by the weight only, as in training: a library that drops it
            # (Q-GaLore sets p.grad to the projected gradient) frees it
            if int8:
                weight.float_grad = make_grad()
            else:
                weight.grad = make_grad()
            tr = MemoryTracker()
            with tr:
                for t in (weight.data, getattr(weight, "scales", None), getattr(weight, "zeros", None)):
                    if t is not None:
                        tr.track(t, "parameters")
                tr.track(weight.float_grad if int8 else weight.grad, "gradients")
                tr.watch_optimizer(opt)
                base = tr.total
                tr.set_phase("optimizer_step")
                opt.step()
                tr.set_phase(None)
            if int8:
                weight.float_grad = None
            else:
                weight.grad = None
            out.append((state_bytes(opt), tr.peaks["optimizer_step"]["total"] - base))
    return out


RECENT_IMPLS = {"apollo-torch", "fira", "q-galore-torch-bf16"}  # run on a whole model (bf16 / fp32 weights)


def model_optimizer(model, impl: str, method: str, *, rank: int, update_gap: int, target_modules=None,
                    layerwise: bool = False):
    """The library optimizer over a whole model, grouped as the authors' scripts group it: the
    non-projected parameters first, then the target linears' weights with the low-rank settings."""
    from memplan.optim.groups import split_parameters

    if layerwise:
        raise ValueError(f"{impl}: the per-layer update is not measured for this library here")
    projected, other = split_parameters(model, target_modules)
    opt = build(method, impl, [p for _, p in projected], rank, gap=update_gap, regular=[p for _, p in other])
    return _synced(opt)


def _synced(opt):
    """Steps with torch.cuda.synchronize() a no-op when there is no CUDA (q-galore calls it)."""
    step = opt.step

    def run(*a, **k):
        with no_cuda_sync():
            return step(*a, **k)

    opt.step = run
    return opt
