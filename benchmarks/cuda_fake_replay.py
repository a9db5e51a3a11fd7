"""Real vs fake-tensor replayed vs estimated reserved memory for the points of benchmarks/cuda_check.py.

    python benchmarks/cuda_fake_replay.py                       # reads benchmarks/results/cuda_check.json
    python benchmarks/cuda_fake_replay.py --points llama-1b/adamw/torch-fused --jobs 4

No GPU is needed: per point of ``cuda_check.json`` (real CUDA, an H200 or any other GPU)
it puts side by side

- ``real``: ``torch.cuda.max_memory_reserved`` / ``max_memory_allocated`` of the measured
  (second) step, the maximum over its phases;
- ``snapshot_replay``: the point's full CUDA snapshot (trace complete from an empty
  allocator) replayed through memplan's allocator model: does the model reproduce the
  real allocator (addresses, segments, reserved)?
- ``fake_replay``: the same code (the same Hugging Face class and optimizer library, built
  by cuda_check.py's own functions) run on the CPU under FakeTensorMode, every storage
  allocation and free logged from the model build on, and replayed from an empty
  allocator: what memplan predicts for ``max_memory_reserved`` without a GPU;
- ``estimate``: memplan's estimate of the run (allocated peak, reserved, device total).

Writes ``benchmarks/results/cuda_fake_replay.json``. The fake runs are independent: ``--jobs``
runs them in parallel processes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _profile_data() -> None:
    """memplan reads its profiles from the package memplan.profile_data (profiles/ once installed);
    run from a source tree without installing, map it to profiles/ here."""
    try:
        import memplan.profile_data  # noqa: F401
    except ImportError:
        import importlib.util
        spec = importlib.util.spec_from_file_location("memplan.profile_data", ROOT / "profiles" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "profiles")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["memplan.profile_data"] = mod
        spec.loader.exec_module(mod)


_profile_data()


def real_numbers(rec: dict) -> dict:
    st = rec["steps"][-1]
    phases = ("forward", "backward", "optimizer_step")
    return {"max_reserved": max(st[f"{p}_peak_reserved"] for p in phases),
            "max_allocated": max(st[f"{p}_peak_allocated"] for p in phases),
            "reserved_end": st["reserved_end"],
            "nvml_minus_reserved": (st["nvml_used_end"] - st["reserved_end"]) if st.get("nvml_used_end") else None}


def snapshot_replay(path: Path) -> dict:
    from memplan.replay import replay
    from memplan.snapshot import load
    r = replay(load(path))
    return {"allocations": r.allocations, "addresses_matched": r.addresses_matched, "segments": r.segments,
            "segments_matched": r.segments_matched, "reserved": r.reserved_bytes, "real_reserved": r.real_reserved_bytes,
            "peak_reserved": r.peak_reserved_bytes, "real_peak_reserved": r.real_peak_reserved_bytes,
            "seconds": round(r.seconds, 3)}


def fake_replay(name: str) -> dict:
    """The point's two steps under FakeTensorMode on the CPU, logged and replayed."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import cuda_check as cc
    from memplan.measure.step import measure_step
    from memplan.measure.tracker import AllocationLog, MemoryTracker
    from memplan.replay import replay_log

    torch.set_num_threads(1)
    s = cc.POINTS[name]
    t0 = time.perf_counter()
    log = AllocationLog()
    torch.manual_seed(0)
    with FakeTensorMode(allow_non_fake_inputs=True):
        with MemoryTracker(log=log):  # the build's allocations too, in order
            model, cfg = cc.build_model(s["model"], s.get("attn", "sdpa"), s.get("dropout0", False), device="cpu")
            if s.get("checkpointing"):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if s["optim"] == "lora-peft":  # fails under FakeTensorMode: peft's _apply cannot swap fake weights
                from peft import LoraConfig, get_peft_model
                model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "gate_proj", "up_proj", "down_proj"]))
            model.train()
            opt = cc.build_optimizer(s["optim"], model)
            ids = torch.randint(0, cfg.vocab_size, (s["batch"], s["seq"]))
            batch = {"input_ids": ids, "labels": ids.clone()}
        for _ in range(2):
            measure_step(model, opt, batch, alloc_log=log)
    r = replay_log(log.events)
    r["run_seconds"] = round(time.perf_counter() - t0, 1)
    r.pop("phases")
    return r


def estimate(name: str) -> dict:
    """memplan's estimate of the point, with the options benchmarks/cuda_compare.py passes."""
    import cuda_check as cc
    from cuda_compare import estimate_for
    e, _missing = estimate_for({"settings": cc.POINTS[name]})
    return {"peak_allocated": e.peak_bytes, "reserved": e.reserved_bytes, "device_total": e.device_total_bytes,
            "overhead": e.overhead}


def compare_point(rec: dict, results_dir: Path) -> dict:
    name = rec["point"]
    row = {"point": name, "real": real_numbers(rec)}
    snap = results_dir / rec["snapshot"] if rec.get("snapshot") else None
    if snap is not None and snap.is_file():
        row["snapshot_replay"] = snapshot_replay(snap)
    for key, fn in (("fake_replay", fake_replay), ("estimate", estimate)):
        try:
            row[key] = fn(name)
        except Exception as e:  # noqa: BLE001 -- one point's failure is reported, not fatal
            row[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    real = row["real"]["max_reserved"]
    for key, field in (("fake_replay", "max_reserved"), ("estimate", "reserved"), ("estimate", "device_total")):
        v = row.get(key, {}).get(field)
        if v is not None:
            row[f"{key}_{field}_error"] = round((v - real) / real, 4)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--points", default="all")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    results = Path(a.results)
    recs = {r["point"]: r for r in json.loads((results / "cuda_check.json").read_text())["points"] if "steps" in r}
    if a.one:
        print("RESULT " + json.dumps(compare_point(recs[a.one], results)), flush=True)
        return 0
    names = list(recs) if a.points == "all" else a.points.split(",")
    t0 = time.perf_counter()
    procs, rows = {}, {}
    pending = list(names)
    while pending or procs:
        while pending and len(procs) < max(1, a.jobs):
            n = pending.pop(0)
            procs[n] = subprocess.Popen([sys.executable, __file__, "--one", n, "--results", str(results)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n, p in list(procs.items()):
            if p.poll() is None:
                continue
            out, err = p.communicate()
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            rows[n] = json.loads(lines[-1][7:]) if lines else {"point": n, "error": err.strip().splitlines()[-3:]}
            del procs[n]
            r = rows[n]
            fr = r.get("fake_replay", {})
            print(f"{n:42s} real {r.get('real', {}).get('max_reserved', 0) / 2**30:7.2f} GiB  fake replay "
                  f"{fr.get('max_reserved', 0) / 2**30:7.2f} GiB  ({r.get('fake_replay_max_reserved_error', '-')})  "
                  f"{fr.get('error', '')}", flush=True)
        time.sleep(0.2)
    out = Path(a.out or results / "cuda_fake_replay.json")
    out.write_text(json.dumps({"points": [rows[n] for n in names], "wall_s": round(time.perf_counter() - t0, 1)},
                              indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
