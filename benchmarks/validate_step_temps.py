"""Optimizer-step temporaries of each bundled optimizer, measured on one weight,
against the estimator's rule in memplan/methods.py (``step_temp``).

Runs under FakeTensorMode (seconds, no memory). For each method, dtype and
projected/dense weight it prints the measured bytes, the rule's bytes and the
measured bytes per element, and writes benchmarks/results/validate_step_temps.json.

    python benchmarks/validate_step_temps.py
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import memplan.optim  # noqa: F401  (module-level tensors must be created outside the fake mode)
from memplan.measure.tracker import MemoryTracker
from memplan.methods import METHODS, Shape
from memplan.optim import build_optimizer

RANK = 16
SHAPES = [(512, 256), (256, 512)]
METHOD_NAMES = ["adamw", "sgd", "adafactor", "adam8bit", "galore", "galore8bit", "golore", "sumo",
                "gradnormlorp", "gradnormlorp8bit"]


def measure(method: str, m: int, n: int, dtype, projected: bool) -> int:
    with FakeTensorMode():
        mod = torch.nn.Module()
        mod.mlp = torch.nn.Module()
        mod.mlp.up_proj = torch.nn.Linear(n, m, bias=False, dtype=dtype)
        mod.mlp.norm = torch.nn.Linear(4, 4, bias=False, dtype=dtype)  # a second weight, never projected
        targets = ["up_proj"] if projected else ["norm"]
        opt = build_optimizer(mod, method, rank=RANK, update_gap=1000, target_modules=targets)
        p = mod.mlp.up_proj.weight
        peak = 0
        for _ in range(2):  # the second step: state exists, no refresh
            p.grad = torch.randn_like(p)
            tr = MemoryTracker()
            with tr:
                tr.watch_model(mod)
                tr.watch_optimizer(opt)
                tr.set_phase("optimizer_step")
                opt.step()
                tr.set_phase(None)
            peak = tr.peaks["optimizer_step"]["temporaries"]
        return peak


def main():
    rows = []
    for method in METHOD_NAMES:
        rule = METHODS[method].step_temp
        projected_options = (False, True) if METHODS[method].uses_rank else (False,)
        for dtype, s in ((torch.bfloat16, 2), (torch.float32, 4)):
            for m, n in SHAPES:
                for proj in projected_options:
                    got = measure(method, m, n, dtype, proj)
                    want = rule(Shape(m, n, proj), RANK, s)
                    rows.append({"method": method, "dtype": str(dtype).removeprefix("torch."), "m": m, "n": n,
                                 "projected": proj, "measured": got, "rule": want,
                                 "measured_per_element": round(got / (m * n), 4)})
                    print(f"{method:17s} {rows[-1]['dtype']:9s} {m:4d}x{n:<4d} projected={int(proj)} "
                          f"measured {got:>9,d}  rule {want:>9,d}  ({got / (m * n):.3f} B/elem)")
    out = Path(__file__).parent / "results" / "validate_step_temps.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
