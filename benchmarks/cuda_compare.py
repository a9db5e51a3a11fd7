"""memplan's estimate and allocator replay against the real CUDA runs of cuda_check.py.

    python benchmarks/cuda_compare.py [benchmarks/results/cuda_check.json]

No GPU needed: it reads what ``benchmarks/cuda_check.py`` wrote on a GPU (per-phase
``max_memory_allocated`` / ``max_memory_reserved``, NVML, snapshots), builds the memplan
estimate of the same configuration with the matching implementation and model options, and
replays each snapshot's trace through memplan's caching-allocator model. Prints a table and
writes ``benchmarks/results/cuda_compare.json``.

Columns: the measured step's peak allocated (the largest phase), the estimate's, their
error; the peak reserved, the replay's, and the estimate's reserved figure; the device
total (reserved + this process's non-PyTorch memory from NVML) against the estimate's.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
GiB = 2 ** 30
PHASES = ("forward", "backward", "optimizer_step")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# cuda_check's optimizer kinds -> (memplan method, estimator options)
OPTIM = {
    "adamw-foreach": ("adamw", {"impl": "torch-foreach"}),
    "adamw-fused": ("adamw", {"impl": "torch-fused"}),
    "adamw-forloop": ("adamw", {"impl": "torch-forloop"}),
    "sgd-m0": ("sgd", {"impl": "torch", "momentum": 0.0}),
    "adafactor-hf": ("adafactor", {"impl": "transformers"}),
    "adam8bit-bnb": ("adam8bit", {"impl": "bitsandbytes"}),
    "galore-torch": ("galore", {"impl": "galore-torch", "rank": 128, "update_gap": 2}),
    "galore8bit-torch": ("galore8bit", {"impl": "galore-torch", "rank": 128, "update_gap": 2}),
    "lora-peft": ("lora", {"impl": "peft", "rank": 16, "lora_dropout": 0.05, "target_modules": LORA_TARGETS,
                           "train_non_target": False}),
}


def estimate_for(point: dict):
    import memplan
    from memplan.estimator import TrainingConfig
    s = point["settings"]
    method, opts = OPTIM[s["optim"]]
    opts = dict(opts, batch_size=s["batch"], seq_len=s["seq"], checkpointing=bool(s.get("checkpointing")))
    if s.get("attn"):
        opts["attn"] = s["attn"]
    if s.get("dropout0"):
        opts["attn_dropout"] = 0.0
    fields = TrainingConfig.__dataclass_fields__
    missing = sorted(k for k in opts if k not in fields)
    opts = {k: v for k, v in opts.items() if k in fields}
    return memplan.estimate(s["model"], method, gpu="h200", **opts), missing  # the GPU measured: its context


def replay(point: dict, results_dir: Path):
    from memplan.replay import replay as replay_trace
    from memplan.snapshot import load
    path = results_dir / point["snapshot"]
    if not path.exists():
        return None
    return replay_trace(load(path))


def _workspaces() -> int:
    from memplan.profiles import load_gpu
    from memplan.reserve import workspace_bytes
    return workspace_bytes(load_gpu("h200"))


def trace_peak(point: dict, results_dir: Path) -> int | None:
    """The largest sum of live *requested* bytes in the snapshot's trace (both steps).

    ``max_memory_allocated`` counts whole blocks: a block the allocator did not split
    (remainder of 1 MiB or less in the large pool, under 512 B in the small one) counts in full,
    so it runs above the bytes the tensors asked for. The estimate models tensor bytes; the
    allocator model accounts for the blocks. This is the figure the estimate should meet."""
    from memplan.measure.snapshot import load_snapshot, snapshot_peak
    path = results_dir / point["snapshot"]
    return snapshot_peak(load_snapshot(path))["trace_peak_allocated"] if path.exists() else None


def compare(point: dict, results_dir: Path, parent_nvml: int | None) -> dict:
    st = point["steps"][1]  # the measured step (step 0 is the warm-up)
    meas = {ph: st[f"{ph}_peak_allocated"] for ph in PHASES}
    peak = max(meas.values())
    reserved = max(st[f"{ph}_peak_reserved"] for ph in PHASES)
    stat_peak = max(max(s[f"{ph}_peak_allocated"] for ph in PHASES) for s in point["steps"])
    tpeak = trace_peak(point, results_dir)
    est, missing = estimate_for(point)
    est_phase = {ph: sum(est.phases[ph].values()) for ph in PHASES}
    est_peak = max(est_phase.values())
    out = {"point": point["point"], "measured_peak": peak, "estimated_peak": est_peak,
           "error": (est_peak - peak) / peak, "measured_phases": meas, "estimated_phases": est_phase,
           "measured_peak_phase": max(meas, key=meas.get), "estimated_peak_phase": max(est_phase, key=est_phase.get),
           "measured_reserved": reserved, "stat_peak_both_steps": stat_peak, "trace_peak_both_steps": tpeak,
           "trace_error": (max(est_phase.values()) - tpeak) / tpeak if tpeak else None,
           # the trace also holds the cuBLAS workspaces (allocated through the caching allocator; the
           # device total counts them, the tensor categories do not): without them, tensors alone
           "tensor_error": ((max(est_phase.values()) - (tpeak - _workspaces())) / (tpeak - _workspaces())
                            if tpeak else None), "options_not_modelled": missing,
           "impl": getattr(est.config, "impl", None)}
    reserved_est = getattr(est, "reserved_bytes", None)
    if reserved_est is not None:
        out["estimated_reserved"] = reserved_est
        out["reserved_error"] = (reserved_est - reserved) / reserved
    if st.get("nvml_used_end") and parent_nvml is not None:
        out["measured_device_total"] = st["nvml_used_end"] - parent_nvml
        out["estimated_device_total"] = est.device_total_bytes
        out["device_total_error"] = (est.device_total_bytes - out["measured_device_total"]) / out["measured_device_total"]
    try:
        r = replay(point, results_dir)
    except Exception as e:  # noqa: BLE001 -- report, don't hide
        out["replay_error"] = f"{type(e).__name__}: {e}"
        r = None
    if r is not None:
        d = r.to_dict() if hasattr(r, "to_dict") else dict(r)
        rep = d.get("replay", d)
        out["replay_peak_reserved"] = rep.get("peak_reserved_bytes")
        out["replay_addresses"] = f"{rep.get('addresses_matched')}/{rep.get('allocations')}"
    return out


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results" / "cuda_check.json"
    data = json.loads(src.read_text())
    points = [p for p in data["points"] if "steps" in p]
    # NVML's used bytes before the child touched CUDA belong to the parent process (see CUDA_README.md)
    parent = points[0].get("nvml_used_before_init") if points else None
    from memplan.errors import MemplanError
    rows = []
    for p in points:
        try:
            rows.append(compare(p, src.parent, parent))
        except MemplanError as e:
            print(f"{p['point']}: not estimated: {e}")
    from tabulate import tabulate
    table = []
    for r in rows:
        table.append([r["point"], r["impl"], f"{r['measured_peak'] / GiB:.3f}", f"{r['estimated_peak'] / GiB:.3f}",
                      f"{r['error']:+.2%}",
                      f"{r['trace_peak_both_steps'] / GiB:.3f}" if r.get("trace_peak_both_steps") else "-",
                      f"{r['trace_error']:+.2%}" if r.get("trace_error") is not None else "-",
                      f"{r['tensor_error']:+.2%}" if r.get("tensor_error") is not None else "-",
                      f"{r['measured_peak_phase']}/{r['estimated_peak_phase']}",
                      f"{r['measured_reserved'] / GiB:.3f}",
                      f"{r['replay_peak_reserved'] / GiB:.3f}" if r.get("replay_peak_reserved") else "-",
                      f"{r['reserved_error']:+.2%}" if "reserved_error" in r else "-",
                      f"{r['device_total_error']:+.2%}" if "device_total_error" in r else "-",
                      ",".join(r["options_not_modelled"]) or ""])
    print(tabulate(table, headers=["point", "impl", "meas GiB", "est GiB", "error", "trace peak", "error", "w/o cuBLAS ws", "peak phase m/e",
                                   "reserved GiB", "replay GiB", "est reserved err", "device total err",
                                   "not modelled"]))
    for key, what in (("error", "vs max_memory_allocated"), ("tensor_error", "vs the trace's tensors"),
                      ("device_total_error", "device total vs NVML")):
        errs = [abs(r[key]) for r in rows if r.get(key) is not None]
        print(f"{what}: |error| worst {max(errs):.2%}, median {statistics.median(errs):.2%}; "
              f"within 1%: {sum(e <= 0.01 for e in errs)}/{len(errs)}")
    out = ROOT / "benchmarks" / "results" / "cuda_compare.json"
    out.write_text(json.dumps({"source": str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src),
                               "points": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
