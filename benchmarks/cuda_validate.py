"""`memplan validate --device cuda` on a few points, from a checkout without installing memplan
(the CUDA path of the bundled model and optimizers against the estimate). Writes
<out>/cuda_validate.json. Run on a CUDA machine: python benchmarks/cuda_validate.py OUT"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POINTS = [
    dict(model="llama-130m", method="galore", batch_size=4, seq_len=256),
    dict(model="llama-130m", method="adamw", batch_size=4, seq_len=256),
    dict(model="llama-130m", method="galore8bit", batch_size=4, seq_len=256, layerwise=True),
    dict(model="llama-1b", method="golore", batch_size=2, seq_len=512, implementation="hf"),
]


def main() -> int:
    from memplan.measure.validate import ValidateConfig, validate
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    results = []
    import torch
    for p in POINTS:
        # one process runs every point: return the previous point's cached segments first, so that
        # max_memory_reserved is this point's own (the allocator model replays each from empty)
        torch.cuda.empty_cache()
        t = time.perf_counter()
        try:
            v = validate(ValidateConfig(device="cuda", **p))
            rec = v.to_dict()
        except Exception as e:  # noqa: BLE001 -- record and go on: this is a data-collection run
            rec = {"config": p, "error": f"{type(e).__name__}: {e}"}
        rec["wall_s"] = round(time.perf_counter() - t, 1)
        results.append(rec)
        print(p, rec.get("passed"), rec.get("error", ""), rec["wall_s"], flush=True)
        (out / "cuda_validate.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
