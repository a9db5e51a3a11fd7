"""The implementation records against real CUDA runs (benchmarks/results/cuda_check.json).

    python benchmarks/cuda_compare_impls.py      # prints a table, writes results/cuda_compare_impls.json

For every point of cuda_check.py that runs a real optimizer library on a Hugging Face model,
the estimate with the matching `--impl` is compared with `torch.cuda.max_memory_allocated`
where the implementation's rules live, so that model-side terms (activations) and device
constants (cuBLAS workspaces) cancel:

- step transients: peak minus start of the optimizer phase of the measured step (steps[1]),
  against the estimate's optimizer-step temporaries (galore-torch: step 1 is not a refresh);
- optimizer state: the forward-start allocation of the point minus that of `sgd-m0` on the
  same model and batch (no state at all), against the estimate's states and projectors;
- the whole peak, for reference: it also holds what is not the implementation's (activations,
  the 64 MiB of cuBLAS workspaces the caching allocator hands out on the first matmuls, the
  allocator's block rounding), which the model rules and the allocator model own.

The CUDA caching allocator rounds every block (512 B; a block over 1 MiB takes the rest of
its 2 MiB-rounded segment when less than 1 MiB would be left): `rounded` gives the rule's
tensors rounded that way, an upper bound of what the allocator can add.
"""
from __future__ import annotations

import json
from pathlib import Path

import memplan
from memplan.estimator import TrainingConfig
from memplan.impls import get_impl

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20



def _kinds() -> dict:
    """cuda_check.py optimizer kind -> (method, impl, estimate options): cuda_compare.py's table."""
    import sys
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cuda_compare import OPTIM
    return {k: (m, o["impl"], {n: v for n, v in o.items() if n != "impl"}) for k, (m, o) in OPTIM.items()}


KINDS = _kinds()


def _block(b: int) -> int:
    """What the caching allocator can hand out for a request of b bytes (upper bound)."""
    b = -(-b // 512) * 512
    if b <= MiB:
        return b
    seg = -(-b // (2 * MiB)) * (2 * MiB)
    return seg if seg - b <= MiB else b


def _rounded_foreach(est) -> int:
    """The foreach buffer tensor by tensor, each rounded as the allocator may."""
    from memplan.inventory import inventory
    return sum(_block(s.numel * 2) for s in inventory(est.config.model, est.config.target_modules))


def compare(points) -> list[dict]:
    base = {}  # (model, batch, seq) -> forward-start allocation with no optimizer state (sgd-m0)
    for p in points:
        s = p["settings"]
        if s["optim"] == "sgd-m0":
            base[(s["model"], s["batch"], s["seq"])] = p["steps"][1]["forward_start_allocated"]
    rows = []
    for p in points:
        s = p["settings"]
        if s["optim"] not in KINDS or s.get("attn", "sdpa") != "sdpa" or s.get("checkpointing"):
            continue
        if s["optim"] == "adamw-forloop" and s["batch"] != 1:
            continue  # the activation points (model side) are compared by the model rules
        method, impl, opts = KINDS[s["optim"]]
        opts = {k: v for k, v in opts.items() if k in TrainingConfig.__dataclass_fields__}
        try:
            est = memplan.estimate(s["model"], method, impl=impl, batch_size=s["batch"], seq_len=s["seq"], **opts)
        except memplan.MemplanError as e:
            rows.append({"point": p["point"], "error": str(e)})
            continue
        st = p["steps"][1]
        cuda_temp = st["optimizer_step_peak_allocated"] - st["optimizer_step_start_allocated"]
        est_temp = est.phases["optimizer_step"]["temporaries"]
        row = {"point": p["point"], "impl": impl, "library": get_impl(method, impl).library,
               "cuda_step_transient": cuda_temp, "estimate_step_transient": est_temp,
               "transient_error_bytes": est_temp - cuda_temp,
               "transient_error_of_step_peak": (est_temp - cuda_temp) / st["optimizer_step_peak_allocated"]}
        if impl in ("torch-foreach", "peft"):
            row["estimate_step_transient_rounded"] = _rounded_foreach(est) if impl == "torch-foreach" else None
        cuda_peak = max(st[f"{ph}_peak_allocated"] for ph in ("forward", "backward", "optimizer_step"))
        row.update(cuda_peak=cuda_peak, estimate_peak=est.peak_bytes,
                   peak_error=(est.peak_bytes - cuda_peak) / cuda_peak)
        key = (s["model"], s["batch"], s["seq"])
        if key in base and method != "lora":
            cuda_state = st["forward_start_allocated"] - base[key]
            est_state = est.phases["optimizer_step"]["optimizer_states"] + est.phases["optimizer_step"]["projectors"]
            row.update(cuda_state=cuda_state, estimate_state=est_state, state_error_bytes=est_state - cuda_state,
                       state_error=(est_state - cuda_state) / max(1, cuda_state))
        rows.append(row)
    return rows


def main():
    src = json.loads((ROOT / "benchmarks/results/cuda_check.json").read_text())
    rows = compare(src["points"])
    out = ROOT / "benchmarks/results/cuda_compare_impls.json"
    out.write_text(json.dumps({"source": "benchmarks/results/cuda_check.json", "rows": rows}, indent=1))
    print(f"{'point':42s} {'CUDA step':>11s} {'estimate':>11s} {'err MiB':>9s} {'%step pk':>8s}   "
          f"{'CUDA state':>11s} {'estimate':>11s} {'err %':>7s}   {'CUDA peak':>10s} {'err %':>7s}")
    for r in rows:
        if "error" in r:
            print(f"{r['point']:42s} {r['error']}")
            continue
        line = (f"{r['point']:42s} {r['cuda_step_transient'] / MiB:11.1f} {r['estimate_step_transient'] / MiB:11.1f} "
                f"{r['transient_error_bytes'] / MiB:+9.1f} {100 * r['transient_error_of_step_peak']:+7.2f}%")
        line += (f"   {r['cuda_state'] / MiB:11.1f} {r['estimate_state'] / MiB:11.1f} {100 * r['state_error']:+6.2f}%"
                 if "cuda_state" in r else " " * 35)
        line += f"   {r['cuda_peak'] / MiB:10.1f} {100 * r['peak_error']:+6.2f}%"
        print(line)
    print(f"\nMiB = 2^20 bytes. Written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
