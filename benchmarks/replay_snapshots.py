"""Replay every real CUDA snapshot through memplan's allocator model; write
benchmarks/results/replay_snapshots.json.

    python benchmarks/replay_snapshots.py [SNAPSHOT_DIR ...]

Default folders: ../shared/data/cuda-snapshots (15 public snapshots, PROVENANCE.md there)
and benchmarks/results/cuda_snapshots (17 known training steps on an H200, written by
benchmarks/cuda_check.py).

Per file: addresses matched / allocations, segment layouts matched / segments, final
and peak reserved bytes real vs replayed, the empty_cache calls found, and the time
to load and to replay (one CPU thread, best of 3 replays).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tabulate import tabulate

from memplan.errors import MemplanError
from memplan.replay import replay
from memplan.snapshot import load

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = [ROOT.parent / "shared" / "data" / "cuda-snapshots", ROOT / "benchmarks" / "results" / "cuda_snapshots"]


def main(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.pickle*")):
        t0 = time.perf_counter()
        snap = load(path)
        load_s = time.perf_counter() - t0
        row = {"folder": folder.name, "file": path.name, "trace_events": len(snap.trace), "load_seconds": round(load_s, 3)}
        try:
            runs = [replay(snap) for _ in range(3)]
        except MemplanError as e:
            row["replay"] = None
            row["why_not"] = str(e)
            rows.append(row)
            continue
        r = min(runs, key=lambda x: x.seconds)
        row.update(r.to_dict())
        row["seconds"] = round(r.seconds, 3)
        row["exact"] = (r.addresses_matched == r.allocations and r.segments_matched == r.segments
                        and r.reserved_bytes == r.real_reserved_bytes
                        and r.peak_reserved_bytes == r.real_peak_reserved_bytes)
        rows.append(row)
    return rows


if __name__ == "__main__":
    folders = [Path(a) for a in sys.argv[1:]] or [d for d in DEFAULT_DIRS if d.is_dir()]
    rows = [r for folder in folders for r in main(folder)]
    mib = 1 << 20
    print(tabulate([[r["file"][:44], f"{r['addresses_matched']}/{r['allocations']}" if "allocations" in r else "-",
                     f"{r['segments_matched']}/{r['segments']}" if "segments" in r else "-",
                     f"{r['real_reserved_bytes'] / mib:,.0f} / {r['reserved_bytes'] / mib:,.0f}" if "allocations" in r
                     else "-",
                     f"{r['real_peak_reserved_bytes'] / mib:,.0f} / {r['peak_reserved_bytes'] / mib:,.0f}"
                     if "allocations" in r else "-",
                     r.get("empty_cache_calls", "-"), r.get("start_blocks_extended", "-"), r["load_seconds"],
                     r.get("seconds", "-"), r.get("why_not", "")[:40]] for r in rows],
                   headers=["file", "addresses", "segments", "reserved MiB real / replay",
                            "peak reserved MiB real / replay", "empty_cache", "start blocks fixed", "load s",
                            "replay s", "not replayed"], disable_numparse=True))
    exact = sum(1 for r in rows if r.get("exact"))
    replayable = sum(1 for r in rows if "allocations" in r)
    print(f"\n{exact}/{replayable} replayable files reproduced exactly ({len(rows)} files)")
    out = ROOT / "benchmarks" / "results" / "replay_snapshots.json"
    out.write_text(json.dumps({"folders": [f.name for f in folders], "files": rows, "exact": exact,
                               "replayable": replayable}, indent=1) + "\n")
    print(f"wrote {out}")
