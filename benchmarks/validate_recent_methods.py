"""Whole-model check of the methods for 16-24 GB GPUs: APOLLO, APOLLO-Mini, Fira, Q-GaLore and QLoRA run
by their own libraries (apollo-torch 1.0.3, fira 1.0.2, q-galore-torch 1.0 on bitsandbytes 0.50.2;
QLoRA: bitsandbytes' NF4 Linear4bit with double quantization under peft LoRA, PagedAdamW8bit) on memplan's
bundled LLaMA and on transformers' LlamaForCausalLM (random weights), real CPU tensors, memplan's
tracker; against the estimate of the same run.

    .venv/bin/python benchmarks/validate_recent_methods.py          # llama-60m, fp32, batch 2 x 64
    .venv/bin/python benchmarks/validate_recent_methods.py --model llama-130m --seq-len 128

fp32 because this CPU has no bf16 instructions (a bf16 step of llama-60m takes minutes); the
per-tensor checks in tests/test_recent_methods.py cover bf16. Q-GaLore runs its bf16-weight path
(`--weights bf16`): its INT8 `QLinear` lives in the authors' repository, not in the package, so
the INT8 path is checked per tensor only. Writes benchmarks/results/validate_recent_methods.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import memplan
from memplan.measure.validate import ValidateConfig, compare, measure_config, summarize_estimate, summarize_measured

CASES = [("apollo", "apollo-torch", None), ("apollo-mini", "apollo-torch", None), ("fira", "fira", None),
         ("qgalore", "q-galore-torch-bf16", "bf16"), ("qlora", "peft-bitsandbytes", None)]
OUT = Path(__file__).parent / "results" / "validate_recent_methods.json"


def run(model: str, rank: int, batch: int, seq: int, precision: str, implementation: str = "bundled") -> list[dict]:
    rows = []
    for method, impl, weights in CASES:
        cfg = ValidateConfig(model=model, method=method, rank=rank, precision=precision, batch_size=batch,
                             seq_len=seq, device="cpu", impl=impl, implementation=implementation)
        t0 = time.perf_counter()
        est = memplan.estimate(cfg.model, method, **cfg.estimator_options(), weights=weights)
        e, m = summarize_estimate(est), summarize_measured(measure_config(cfg))
        err, failures = compare(e, m)
        rows.append({"method": method, "impl": impl, "model": model, "model_class": implementation,
                     "precision": precision, "rank": rank,
                     "batch_size": batch, "seq_len": seq, "estimate_peak_bytes": e["peak_bytes"],
                     "measured_peak_bytes": m["peak_bytes"], "peak_error": err["peak"]["relative"],
                     "estimate_peak_phase": e["peak_phase"], "measured_peak_phase": m["peak_phase"],
                     "category_error_bytes": {c: v["bytes"] for c, v in err["categories"].items()},
                     "failures": failures, "seconds": round(time.perf_counter() - t0, 1)})
        r = rows[-1]
        exact = all(r["category_error_bytes"][c] == 0 for c in ("parameters", "gradients", "optimizer_states",
                                                                 "projectors"))
        print(f"{implementation:8s} {method:12s} {impl:20s} peak est {e['peak_bytes'] / 2**20:9.2f} MiB  measured "
              f"{m['peak_bytes'] / 2**20:9.2f} MiB  error {100 * r['peak_error']:+.3f}%  states exact: {exact}  "
              f"phase {e['peak_phase']}/{m['peak_phase']}  {r['seconds']} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-60m")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--classes", default="bundled,hf", help="model classes: bundled (memplan's LLaMA), hf "
                                                           "(transformers' LlamaForCausalLM, random weights)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [r for cls in a.classes.split(",")
            for r in run(a.model, a.rank, a.batch_size, a.seq_len, a.precision, cls.strip())]
    OUT.write_text(json.dumps(rows, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
