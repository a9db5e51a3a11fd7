"""Byte-for-byte equality of the estimator before and after a change to its code.

A speed-up of the estimator must not move a single byte. This draws a few thousand
configurations (seeded, so the same ones every time: every built-in model, method and
implementation, ranks, batch sizes, sequence lengths, precisions, weight formats,
per-layer update and checkpointing, with and without a GPU), estimates each, and writes
every category of every phase, the overhead, the counts, the peak and the fit; a
configuration the estimator refuses is kept with its error message. Run it on the old
code with --write, on the new code with --check:

    python benchmarks/estimate_equality.py --write /tmp/before.json
    (change the code)
    python benchmarks/estimate_equality.py --check /tmp/before.json

--check prints the number of configurations compared and the first differences, and
exits 1 when any differs.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import memplan
from memplan.impls import impls_of
from memplan.quant import WEIGHT_FORMATS

SEED = 0
GPUS = (None, "rtx-4090", "a100-80gb")


def configs(n: int) -> list[dict]:
    rng = random.Random(SEED)
    models = memplan.model_names()
    methods = list(memplan.METHODS)
    out = []
    for _ in range(n):
        method = rng.choice(methods)
        opts = {
            "model": rng.choice(models), "method": method,
            "rank": rng.choice((4, 8, 64, 128, 256, 512, 1024)),
            "batch_size": rng.choice((1, 2, 4, 8, 32)),
            "seq_len": rng.choice((128, 256, 512, 1024, 2048, 4096)),
            "precision": rng.choice(("bf16", "bf16", "mixed", "fp32")),
            "layerwise": rng.random() < 0.5, "checkpointing": rng.random() < 0.5,
            "gpu": rng.choice(GPUS),
        }
        if rng.random() < 0.5:
            opts["impl"] = rng.choice(list(impls_of(method)))
        if rng.random() < 0.2:
            opts["weights"] = rng.choice(list(WEIGHT_FORMATS))
        if method == "sgd" and rng.random() < 0.5:
            opts["momentum"] = rng.choice((0.0, 0.9))
        if method == "adafactor" and rng.random() < 0.5:
            opts["beta1"] = rng.choice((0.9, "none"))
        out.append(opts)
    return out


def result(opts: dict):
    o = dict(opts)
    model, method, gpu = o.pop("model"), o.pop("method"), o.pop("gpu")
    try:
        est = memplan.estimate(model, method, gpu=gpu, **o)
    except memplan.MemplanError as e:
        return {"error": str(e)}
    return est.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path, help="write the results of this code here")
    g.add_argument("--check", type=Path, help="compare this code's results with a file --write wrote")
    ap.add_argument("-n", type=int, default=4000, help="configurations (default 4000)")
    args = ap.parse_args()
    cfgs = configs(args.n)
    results = [result(c) for c in cfgs]
    if args.write:
        args.write.write_text(json.dumps({"configs": cfgs, "results": results}))
        ok = sum("error" not in r for r in results)
        print(f"wrote {len(results)} configurations ({ok} estimated, {len(results) - ok} refused) to {args.write}")
        return
    old = json.loads(args.check.read_text())
    if old["configs"] != json.loads(json.dumps(cfgs)):
        sys.exit("the configurations differ from the file's (another seed, -n or set of models/methods)")
    diffs = [(c, a, b) for c, a, b in zip(cfgs, old["results"], json.loads(json.dumps(results))) if a != b]
    ok = sum("error" not in r for r in results)
    print(f"compared {len(results)} configurations ({ok} estimated, {len(results) - ok} refused): "
          f"{len(diffs)} differ")
    for c, a, b in diffs[:5]:
        print("DIFF", c)
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                print(f"  {k}: before {a.get(k)!r}\n  {' ' * len(k)}  after  {b.get(k)!r}")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
