"""Cut the small test snapshots in this folder from the public snapshots in
../shared/data/cuda-snapshots (see PROVENANCE.md there: source repository, commit,
git blob SHA-1 of each file). Run from the repository root:

    python tests/data/snapshots/make_fixtures.py /path/to/shared/data/cuda-snapshots

A cut keeps the dump (segments and blocks) unchanged and the last N events of the
trace: exactly what the allocator's ring buffer would have kept with
max_entries=N, so the cut is itself a valid snapshot. Stacks are reduced to their
Python frames (file, line, function) to keep the files small; C++ frames are dropped
except the autograd-engine and AccumulateGrad ones the category rules look at.
"""
from __future__ import annotations

import gzip
import json
import pickle
import sys
from pathlib import Path

HERE = Path(__file__).parent
CUTS = {  # fixture -> (source file, events kept)
    "silmont2000_full.pickle.gz": ("silmont2000__assignment2-systems__133f064__mem_snapshot.pickle.gz", None),
    "mercuryb1_tail.pickle.gz": ("MercuryB1__SQAttn__126d2e6__cuda_memory_snapshot.pickle.gz", 600),
    "maphsge4_tail.pickle.gz": ("Maphsge4__select_n__04d383c__snapshot.pickle.gz", 700),
    "wedsonlin_tail.pickle.gz": ("Wedsonlin__assignment2-systems__8630bcf__medium_512_training_memory_snapshot"
                                 ".pickle.gz", 1500),
    "octree_oom_tail.pickle.gz": ("HugePandaCoder__octree-nca-groupeq__3e8aa21__inference2_peso_oct.pickle.gz", 400),
    "constructor_expandable_tail.pickle.gz": ("Constructor-Sun__code_location__52e52b2__memory_snapshot.pickle.gz", 150),
}
KEEP_CPP = ("autograd::Engine", "AccumulateGrad")


def _frames(frames, memo):
    if not isinstance(frames, list):
        return frames
    key = id(frames)
    if key not in memo:
        memo[key] = [f for f in frames if str(f.get("filename", "")).endswith(".py")
                     or any(k in str(f.get("name", "")) for k in KEEP_CPP)][:24]
    return memo[key]


def cut(raw: dict, keep: int | None) -> dict:
    memo = {}
    out = dict(raw)
    out["segments"] = [{**s, "frames": [], "blocks": [{**b, "frames": _frames(b.get("frames"), memo)}
                                                      for b in s["blocks"]]} for s in raw["segments"]]
    traces = []
    for t in raw["device_traces"]:
        t = t if keep is None else t[-keep:]
        traces.append([{**e, "frames": _frames(e.get("frames"), memo)} for e in t])
    out["device_traces"] = traces
    out.pop("external_annotations", None)
    return out


def main(src: str) -> None:
    sys.path.insert(0, str(HERE.parents[2]))
    from memplan.snapshot import loads_raw
    provenance = {}
    for name, (source, keep) in CUTS.items():
        raw = loads_raw((Path(src) / source).read_bytes())
        (HERE / name).write_bytes(gzip.compress(pickle.dumps(cut(raw, keep), protocol=4), mtime=0))
        provenance[name] = {"source": source, "trace_events_kept": keep or "all",
                            "provenance": "../shared/data/cuda-snapshots/PROVENANCE.md (public GitHub; "
                                          "repository, commit and git blob SHA-1 per file)"}
    (HERE / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cuda-snapshots")
