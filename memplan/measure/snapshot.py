"""CUDA memory snapshots: record one (torch), and load one safely (memplan.snapshot, no torch).

``record(path)`` wraps ``torch.cuda.memory._record_memory_history`` and
``_dump_snapshot``: the file opens in https://pytorch.org/memory_viz, and
``memplan snapshot FILE`` analyses and replays it.

The safe reader lives in the core package (``memplan.snapshot``: every pickle
global refused, cost bounded by the file's real size); the names here are kept
for existing callers.
"""
from __future__ import annotations

import contextlib

from memplan.snapshot import MAX_BYTES, UnsafeSnapshotError, from_dict, load, loads_raw

__all__ = ["record", "load_snapshot", "loads_snapshot", "UnsafeSnapshotError", "snapshot_peak", "MAX_BYTES"]


def loads_snapshot(data: bytes) -> dict:
    """The snapshot's plain dict, checked (types, sizes, bounded counts) but not converted."""
    raw = loads_raw(data)
    from_dict(raw)
    return raw


def load_snapshot(path) -> dict:
    """A snapshot from ``torch.cuda.memory._dump_snapshot``, loaded without running code."""
    with open(path, "rb") as f:
        return loads_snapshot(f.read(MAX_BYTES + 1))


def snapshot_peak(snap: dict) -> dict:
    """Peak allocated bytes over the trace of the device with the longest trace (requested
    sizes), and the bytes allocated and reserved in the segments at the time of the snapshot."""
    s = from_dict(snap)
    peak = cur = 0
    for ev in s.trace:
        if ev.action == "alloc":
            cur += ev.size
            peak = max(peak, cur)
        elif ev.action == "free_completed":
            cur -= ev.size
    return {"trace_peak_allocated": peak, "allocated": s.allocated_bytes, "reserved": s.reserved_bytes}


@contextlib.contextmanager
def record(path=None, max_entries: int = 200_000):
    """Record the CUDA allocator's history; write a snapshot to ``path`` on exit."""
    import torch
    if path is None:
        yield
        return
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    try:
        yield
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)


__all__ += ["load"]
