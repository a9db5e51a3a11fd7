"""Real CUDA ground truth for the estimator and the allocator model, in one command.

    python benchmarks/cuda_check.py                 # every point, ~5 min on one GPU
    python benchmarks/cuda_check.py --points llama-1b/adamw/torch-foreach
    python benchmarks/cuda_check.py --list

Each point is one training configuration as users run it: a Hugging Face model class built
from a memplan profile (random weights, no download), the real optimizer library
(torch.optim with foreach / fused / for-loop, transformers' Adafactor, galore-torch,
bitsandbytes, peft), on CUDA, in a fresh process (a fresh CUDA context and an empty caching
allocator). Per point it records, for a warm-up step and then a measured step:

- ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` per phase (forward,
  backward, optimizer_step), allocated at each phase boundary;
- the CUDA context and library workspaces outside PyTorch's allocator: NVML's used bytes
  for this GPU minus ``memory_reserved`` (one process on the GPU), before and after the step;
- a full CUDA memory snapshot (``_record_memory_history`` from before the model is built,
  so the trace is complete from an empty allocator), gzip-compressed.

Results: ``<out>/cuda_check.json`` and ``<out>/cuda_snapshots/<point>.pickle.gz``. While the
GPU runs the next point, the CPU compares each finished one (``benchmarks/cuda_fake_replay.py``:
the snapshot replayed through memplan's allocator model, the same step under FakeTensorMode
replayed from an empty allocator, and memplan's estimate) and ``<out>/cuda_fake_replay.json``
gets real vs replayed vs estimated reserved bytes per point (``--no-compare`` skips it; the
comparison can be rerun from the files on any machine, no GPU needed).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles" / "models"

# Public configs of families memplan has no profile for (values from the models' config.json).
EXTRA_CONFIGS = {
    "gpt2": {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
             "n_head": 12, "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1,
             "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True},
    "opt-1.3b": {"model_type": "opt", "vocab_size": 50272, "hidden_size": 2048, "num_hidden_layers": 24,
                 "ffn_dim": 8192, "num_attention_heads": 32, "max_position_embeddings": 2048,
                 "do_layer_norm_before": True, "word_embed_proj_dim": 2048, "dropout": 0.1,
                 "attention_dropout": 0.0, "activation_function": "relu", "enable_bias": True,
                 "tie_word_embeddings": True},
}


# name -> settings. model: profile name or EXTRA_CONFIGS key; optim: which library builds it.
POINTS = {
    "llama-1b/adamw/torch-foreach": dict(model="llama-1b", optim="adamw-foreach", batch=1, seq=512),
    "llama-1b/adamw/torch-fused": dict(model="llama-1b", optim="adamw-fused", batch=1, seq=512),
    "llama-1b/adamw/torch-forloop": dict(model="llama-1b", optim="adamw-forloop", batch=1, seq=512),
    "llama-1b/sgd-m0/torch": dict(model="llama-1b", optim="sgd-m0", batch=1, seq=512),
    "llama-1b/adafactor/transformers": dict(model="llama-1b", optim="adafactor-hf", batch=1, seq=512),
    "llama-1b/adam8bit/bitsandbytes": dict(model="llama-1b", optim="adam8bit-bnb", batch=1, seq=512),
    "llama-1b/galore/galore-torch": dict(model="llama-1b", optim="galore-torch", batch=1, seq=512),
    "llama-1b/galore8bit/galore-torch": dict(model="llama-1b", optim="galore8bit-torch", batch=1, seq=512),
    "llama-1b/adamw-forloop/eager-4x512": dict(model="llama-1b", optim="adamw-forloop", batch=4, seq=512,
                                               attn="eager"),
    "llama-1b/adamw-forloop/sdpa-4x512": dict(model="llama-1b", optim="adamw-forloop", batch=4, seq=512),
    "llama-1b/lora/peft-r16-d0.05-4x512": dict(model="llama-1b", optim="lora-peft", batch=4, seq=512),
    "llama-1b/adamw-forloop/ckpt-4x1024": dict(model="llama-1b", optim="adamw-forloop", batch=4, seq=1024,
                                               checkpointing=True),
    "gpt2/adamw-forloop/4x512": dict(model="gpt2", optim="adamw-forloop", batch=4, seq=512, dropout0=True),
    "opt-1.3b/adamw-forloop/4x512": dict(model="opt-1.3b", optim="adamw-forloop", batch=4, seq=512),
    "roberta-base/adamw-forloop/4x512": dict(model="roberta-base", optim="adamw-forloop", batch=4, seq=512,
                                             dropout0=True),
    "llama-7b/adamw/torch-foreach-1x2048": dict(model="llama-7b", optim="adamw-foreach", batch=1, seq=2048),
    "mistral-7b/lora/peft-r16-4x512": dict(model="mistral-7b", optim="lora-peft", batch=4, seq=512),
}


def load_config_dict(name: str) -> dict:
    if name in EXTRA_CONFIGS:
        return dict(EXTRA_CONFIGS[name])
    d = json.loads((PROFILES / f"{name}.json").read_text())
    d.pop("_memplan", None)
    return d


def build_model(name: str, attn: str, dropout0: bool, device: str = "cuda"):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    d = load_config_dict(name)
    cfg = CONFIG_MAPPING[d.pop("model_type")](**d)
    cfg.use_cache = False
    if dropout0:  # attention dropout 0 (what the activation rules assume unless told)
        for key in ("attn_pdrop", "attention_probs_dropout_prob", "attention_dropout"):
            if hasattr(cfg, key):
                setattr(cfg, key, 0.0)
    cfg._attn_implementation = attn
    auto = AutoModelForMaskedLM if cfg.model_type in ("roberta", "bert") else AutoModelForCausalLM
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = auto.from_config(cfg, attn_implementation=attn)
    finally:
        torch.set_default_dtype(old)
    return model, cfg


def build_optimizer(kind: str, model):
    import torch
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adamw-foreach":
        return torch.optim.AdamW(params, lr=1e-4, foreach=True)
    if kind == "adamw-fused":
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if kind == "adamw-forloop":
        return torch.optim.AdamW(params, lr=1e-4, foreach=False)
    if kind == "sgd-m0":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.0)
    if kind == "adafactor-hf":
        from transformers.optimization import Adafactor
        return Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False)
    if kind == "adam8bit-bnb":
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(params, lr=1e-4)
    if kind in ("galore-torch", "galore8bit-torch"):
        from galore_torch import GaLoreAdamW, GaLoreAdamW8bit
        target, other = [], []
        for name, p in model.named_parameters():
            (target if p.ndim == 2 and any(k in name for k in ("attn", "mlp")) else other).append(p)
        groups = [{"params": other}, {"params": target, "rank": 128, "update_proj_gap": 2, "scale": 0.25,
                                      "proj_type": "std"}]
        return (GaLoreAdamW if kind == "galore-torch" else GaLoreAdamW8bit)(groups, lr=1e-3)
    if kind == "lora-peft":
        return torch.optim.AdamW(params, lr=1e-4)  # torch's CUDA default (foreach)
    raise ValueError(f"unknown optimizer kind {kind!r}")


def nvml_used() -> int | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0))
        return int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
    except Exception:  # noqa: BLE001 -- NVML is optional evidence
        return None


def run_point(name: str, out: Path) -> dict:
    import torch
    s = POINTS[name]
    torch.manual_seed(0)
    used_before_init = nvml_used()
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    used_after_init = nvml_used()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    t0 = time.perf_counter()
    model, cfg = build_model(s["model"], s.get("attn", "sdpa"), s.get("dropout0", False))
    if s.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if s["optim"] == "lora-peft":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "gate_proj", "up_proj", "down_proj"]))
    model.train()
    opt = build_optimizer(s["optim"], model)
    vocab = cfg.vocab_size
    ids = torch.randint(0, vocab, (s["batch"], s["seq"]), device="cuda")
    labels = ids.clone()
    rec = {"point": name, "settings": s, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
           "parameters": sum(p.numel() for p in model.parameters()),
           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "nvml_used_before_init": used_before_init, "nvml_used_after_init": used_after_init, "steps": []}
    torch.cuda.synchronize()
    rec["allocated_after_build"] = torch.cuda.memory_allocated()
    for step in range(2):
        st = {}
        for phase in ("forward", "backward", "optimizer_step"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            st[f"{phase}_start_allocated"] = torch.cuda.memory_allocated()
            if phase == "forward":
                loss = model(input_ids=ids, labels=labels).loss
            elif phase == "backward":
                loss.backward()
                del loss
            else:
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            st[f"{phase}_peak_allocated"] = torch.cuda.max_memory_allocated()
            st[f"{phase}_peak_reserved"] = torch.cuda.max_memory_reserved()
            st[f"{phase}_end_allocated"] = torch.cuda.memory_allocated()
        st["reserved_end"] = torch.cuda.memory_reserved()
        st["nvml_used_end"] = nvml_used()
        rec["steps"].append(st)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    stats = torch.cuda.memory_stats()
    rec["num_alloc_retries"] = stats.get("num_alloc_retries", 0)
    rec["segments"] = stats.get("segment.all.current", 0)
    snap_dir = out / "cuda_snapshots"
    snap_dir.mkdir(parents=True, exist_ok=True)
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    import pickle
    path = snap_dir / (name.replace("/", "__") + ".pickle.gz")
    with gzip.open(path, "wb", compresslevel=6) as f:
        pickle.dump(snap, f)
    rec["snapshot"] = str(path.relative_to(out))
    rec["snapshot_bytes"] = path.stat().st_size
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="all", help="comma-separated point names, or 'all'")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: run this point
    ap.add_argument("--timeout", type=int, default=120, help="seconds per point")
    ap.add_argument("--no-compare", action="store_true", help="collect only; no replay / estimate comparison")
    a = ap.parse_args()
    out = Path(a.out)
    if a.list:
        print("\n".join(POINTS))
        return 0
    if a.one:
        rec = run_point(a.one, out)
        print("RESULT " + json.dumps(rec))
        return 0
    try:
        import torch
        if not torch.cuda.is_available():
            print("Error: benchmarks/cuda_check.py needs a CUDA GPU; none is visible.", file=sys.stderr)
            return 2
    except ImportError:
        print("Error: benchmarks/cuda_check.py needs torch with CUDA.", file=sys.stderr)
        return 2
    names = list(POINTS) if a.points == "all" else a.points.split(",")
    results, t_all = [], time.perf_counter()
    compare = _Compare(out, (os.cpu_count() or 2) - 2)
    for name in names:
        t = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, __file__, "--one", name, "--out", str(out)], capture_output=True,
                               text=True, timeout=a.timeout)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if lines:
                rec = json.loads(lines[-1][7:])
            else:
                rec = {"point": name, "error": (p.stderr or p.stdout).strip().splitlines()[-5:]}
        except subprocess.TimeoutExpired:
            rec = {"point": name, "error": f"timed out after {a.timeout} s"}
        rec["wall_s"] = round(time.perf_counter() - t, 1)
        results.append(rec)
        st = rec.get("steps", [{}])[-1]
        peak = max((st.get(f"{ph}_peak_allocated", 0) for ph in ("forward", "backward", "optimizer_step")),
                   default=0)
        print(f"{name:45s} {rec['wall_s']:6.1f}s  peak alloc {peak / 2**30:8.3f} GiB  "
              f"reserved {st.get('reserved_end', 0) / 2**30:8.3f} GiB  {rec.get('error', '')}", flush=True)
        (out / "cuda_check.json").write_text(json.dumps(
            {"points": results, "wall_s": round(time.perf_counter() - t_all, 1)}, indent=1))
        if not a.no_compare and "steps" in rec:
            compare.start(name)
    if not a.no_compare:
        compare.finish(out / "cuda_fake_replay.json")
    return 0


class _Compare:
    """cuda_fake_replay.py --one POINT per finished point, on the CPU, while the GPU runs the next."""

    def __init__(self, out: Path, jobs: int):
        self.out, self.jobs, self.procs, self.rows, self.queue = out, max(1, jobs), {}, {}, []

    def start(self, name: str) -> None:
        self.queue.append(name)
        self._pump()

    def _pump(self, block: bool = False) -> None:
        while True:
            for n, p in list(self.procs.items()):
                if p.poll() is not None:
                    o, e = p.communicate()
                    lines = [ln for ln in o.splitlines() if ln.startswith("RESULT ")]
                    self.rows[n] = json.loads(lines[-1][7:]) if lines else {"point": n, "error": e.strip()[-500:]}
                    del self.procs[n]
            while self.queue and len(self.procs) < self.jobs:
                n = self.queue.pop(0)
                self.procs[n] = subprocess.Popen(
                    [sys.executable, str(ROOT / "benchmarks" / "cuda_fake_replay.py"), "--one", n, "--results",
                     str(self.out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # CPU only: the GPU is busy
            if not block or not (self.procs or self.queue):
                return
            time.sleep(0.5)

    def finish(self, path: Path) -> None:
        self._pump(block=True)
        rows = [self.rows[n] for n in sorted(self.rows)]
        path.write_text(json.dumps({"points": rows}, indent=1) + "\n")
        for r in rows:
            real = r.get("real", {}).get("max_reserved", 0)
            fr, es = r.get("fake_replay", {}), r.get("estimate", {})
            print(f"{r['point']:45s} reserved real {real / 2**30:7.2f}  fake replay "
                  f"{fr.get('max_reserved', 0) / 2**30:7.2f}  estimate {es.get('reserved', 0) / 2**30:7.2f} GiB "
                  f"{fr.get('error', '') or es.get('error', '') or r.get('error', '')}"[:220], flush=True)


if __name__ == "__main__":
    sys.exit(main())
