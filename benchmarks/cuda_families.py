"""The model-side rules on real CUDA: `memplan validate --device cuda` on the Hugging Face class
of each family (LLaMA, Mistral, GPT-2, OPT, RoBERTa), SDPA and eager attention, dropout, peft
LoRA, from a checkout without installing memplan. Each point runs in a fresh process (a fresh
CUDA caching allocator). Per point: memplan's estimate (CUDA kernels), memplan's tracker on the
CUDA tensors (storages rounded to 512 B) and torch.cuda.max_memory_allocated per phase.

    python benchmarks/cuda_families.py OUT            # every point, writes OUT/cuda_families.json
    python benchmarks/cuda_families.py OUT 0 3        # points 0..2
"""
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (model, method, impl, batch, seq, settings): the issue-9 targets, with AdamW for-loop steps
POINTS = [
    ("llama-1b", "adamw", "torch-forloop", 4, 512, {"attn": "sdpa"}),
    ("llama-1b", "adamw", "torch-forloop", 4, 512, {"attn": "eager"}),
    ("llama-1b", "adamw", "torch-forloop", 4, 512, {"attn": "sdpa", "attn_dropout": 0.1}),
    ("llama-1b", "lora", "peft", 4, 512, {"attn": "sdpa", "lora_dropout": 0.05}),
    ("gpt2", "adamw", "torch-forloop", 4, 512, {"attn": "sdpa", "attn_dropout": 0.0}),
    ("gpt2", "adamw", "torch-forloop", 4, 512, {"attn": "eager"}),
    ("opt-1.3b", "adamw", "torch-forloop", 4, 512, {"attn": "sdpa"}),
    ("opt-1.3b", "lora", "peft", 4, 512, {"attn": "sdpa", "lora_dropout": 0.05}),
    ("roberta-base", "adamw", "torch-forloop", 4, 512, {"attn": "sdpa", "attn_dropout": 0.0}),
    ("roberta-base", "adamw", "torch-forloop", 4, 512, {"attn": "eager"}),
    ("mistral-7b", "lora", "peft", 4, 512, {"attn": "sdpa"}),
]


def _import_memplan():
    """memplan from this checkout; its data folder mapped as the installed package maps it."""
    sys.path.insert(0, str(ROOT))
    try:
        importlib.import_module("memplan.profile_data")
    except (ImportError, AttributeError):  # not installed: memplan's lazy exports answer AttributeError
        import memplan
        spec = importlib.machinery.ModuleSpec("memplan.profile_data", None, is_package=True)
        spec.submodule_search_locations = [str(ROOT / "profiles")]
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = str(ROOT / "profiles" / "__init__.py")
        sys.modules["memplan.profile_data"] = mod
        memplan.profile_data = mod


def run_point(i: int) -> dict:
    _import_memplan()
    import torch
    import transformers

    from memplan.measure.validate import ValidateConfig, validate
    model, method, impl, b, s, extra = POINTS[i]
    t = time.perf_counter()
    v = validate(ValidateConfig(model=model, method=method, impl=impl, rank=16, batch_size=b, seq_len=s,
                                device="cuda", implementation="hf", **extra)).to_dict()
    v["wall_s"] = round(time.perf_counter() - t, 1)
    v["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gpu": torch.cuda.get_device_name()}
    try:
        import peft
        v["versions"]["peft"] = peft.__version__
    except ImportError:
        pass
    return v


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(run_point(int(sys.argv[2])), default=str))
        return 0
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    lo = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    hi = int(sys.argv[3]) if len(sys.argv) > 3 else len(POINTS)
    results = []
    for i in range(lo, hi):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--one", str(i)], capture_output=True, text=True)
        try:
            rec = json.loads(p.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            rec = {"point": POINTS[i], "error": p.stderr.strip().splitlines()[-3:]}
        rec["point"] = POINTS[i]
        results.append(rec)
        if "error" in rec and "estimate" not in rec:
            print(i, POINTS[i], "ERROR", rec["error"], flush=True)
        else:
            e, m = rec["estimate"], rec["measured"]
            cuda = m.get("cuda", {}).get("max_allocated", 0)
            print(f"{i} {POINTS[i][0]} {POINTS[i][1]} {POINTS[i][5]}: estimate {e['peak_bytes'] / 2**30:.3f} GiB, "
                  f"tracker {m['peak_bytes'] / 2**30:.3f} GiB ({rec['error']['peak']['relative']:+.3%}), "
                  f"max_memory_allocated {cuda / 2**30:.3f} GiB, {time.perf_counter() - t:.0f} s", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cuda_families.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
