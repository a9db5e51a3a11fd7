"""memplan's tracker against PyTorch's MemTracker (torch.distributed._tools.mem_tracker) on the
Hugging Face classes, under FakeTensorMode: both watch the same training step (the second; the
first creates the optimizer state), and their peaks of live tensor bytes are compared.

    python benchmarks/memtracker_check.py          # writes benchmarks/results/memtracker_check.json
"""
import json
import sys
import time
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (model, method, impl, batch, seq, settings)
POINTS = [
    ("gpt2", "adamw", "torch-forloop", 4, 512, {"attn": "sdpa"}),
    ("gpt2", "adamw", "torch-forloop", 4, 512, {"attn": "eager", "attn_dropout": 0.0}),
    ("roberta-base", "adamw", "torch-forloop", 4, 512, {"attn": "sdpa", "attn_dropout": 0.0}),
    ("opt-1.3b", "adamw", "torch-forloop", 2, 512, {"attn": "sdpa"}),
    ("llama-1b", "adamw", "torch-forloop", 2, 512, {"attn": "eager"}),
    ("llama-1b", "lora", "peft", 2, 512, {"attn": "sdpa", "lora_dropout": 0.05}),
]
# MemTracker registers a gradient hook on every parameter of each module it sees run forward;
# PyTorch refuses a hook on a parameter that needs no gradient, so MemTracker cannot watch a model
# with frozen weights (peft LoRA): such points are reported as not comparable.


def run(model, method, impl, b, s, extra) -> dict:
    import memplan.measure.libs  # noqa: F401  (outside the fake mode: module-level tensors stay real)
    import memplan.models  # noqa: F401
    import memplan.optim  # noqa: F401
    from memplan.measure.step import measure_step
    from memplan.measure.validate import ValidateConfig, _loss, _one_sequence_per_row, build
    cfg = ValidateConfig(model=model, method=method, impl=impl, rank=16, batch_size=b, seq_len=s, device="fake",
                         implementation="hf", **extra)
    torch.set_num_threads(1)
    with FakeTensorMode(), _one_sequence_per_row():
        net, opt, batch, _ = build(cfg)
        measure_step(net, opt, batch, _loss)  # warm-up: the optimizer state exists from here on
        mt = MemTracker()
        # the parameters, buffers and the batch as tensors (MemTracker hooks every parameter of a module it is
        # given, which fails on peft's frozen ones), the optimizer for its states
        mt.track_external(opt, *net.parameters(), *net.buffers(), *batch.values())
        with mt:
            m = measure_step(net, opt, batch, _loss)
        snap = mt.get_tracker_snapshot("peak")
    mt_peak = max(v["Total"] for v in snap.values())
    ours = m.peak_bytes + 0  # every category, model buffers ("overhead") included
    return {"point": [model, method, impl, b, s, extra], "memplan_tracker_peak": ours, "memtracker_peak": mt_peak,
            "difference_bytes": ours - mt_peak, "memplan_peak_phase": m.peak_phase,
            "memtracker_categories": {str(k): v for k, v in next(iter(snap.values())).items()}}


def main() -> int:
    out = []
    for p in POINTS:
        t = time.perf_counter()
        try:
            r = run(*p)
        except RuntimeError as e:
            out.append({"point": list(p), "not_comparable": str(e).splitlines()[0]})
            print(f"{p[0]:<13} {p[1]:<6} {p[2]:<14} not comparable: {out[-1]['not_comparable']}", flush=True)
            continue
        r["seconds"] = round(time.perf_counter() - t, 1)
        out.append(r)
        print(f"{p[0]:<13} {p[1]:<6} {p[2]:<14} {p[3]}x{p[4]} {p[5]}: memplan {r['memplan_tracker_peak']:,} "
              f"MemTracker {r['memtracker_peak']:,} difference {r['difference_bytes']:+,} B ({r['seconds']} s)",
              flush=True)
    path = ROOT / "benchmarks" / "results" / "memtracker_check.json"
    path.write_text(json.dumps({"torch": torch.__version__, "points": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
