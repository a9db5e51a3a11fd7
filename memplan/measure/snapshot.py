"""CUDA memory snapshots: record one, and load one safely.

``record(path)`` wraps ``torch.cuda.memory._record_memory_history`` and
``_dump_snapshot``: the file opens in https://pytorch.org/memory_viz.

``load_snapshot(path)`` reads a snapshot a user hands us. Snapshots are
pickles, and unpickling runs whatever callables the file names, so the loader
refuses every global: a genuine snapshot holds only dicts, lists, strings,
numbers, booleans and None, which pickle builds without looking anything up.
"""
from __future__ import annotations

import contextlib
import io
import pickle

__all__ = ["record", "load_snapshot", "loads_snapshot", "UnsafeSnapshotError", "snapshot_peak"]

MAX_BYTES = 2 << 30  # a snapshot larger than 2 GiB is refused rather than read into memory


class UnsafeSnapshotError(ValueError):
    """The file asks pickle to import or call something: not a plain memory snapshot."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise UnsafeSnapshotError(
            f"Refusing to load the snapshot: it references {module}.{name}. A CUDA memory snapshot holds only "
            "plain data; this file could run code when unpickled.")

    def persistent_load(self, pid):
        raise UnsafeSnapshotError("Refusing to load the snapshot: it uses pickle persistent ids")


def loads_snapshot(data: bytes) -> dict:
    snap = _PlainUnpickler(io.BytesIO(data)).load()
    if not isinstance(snap, dict) or "segments" not in snap:
        raise ValueError("Not a CUDA memory snapshot: expected a dict with 'segments' "
                         "(written by torch.cuda.memory._dump_snapshot)")
    return snap


def load_snapshot(path) -> dict:
    """A snapshot from ``torch.cuda.memory._dump_snapshot``, loaded without running code."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"Snapshot {path} is larger than {MAX_BYTES >> 30} GiB; refusing to load it")
    return loads_snapshot(data)


def snapshot_peak(snap: dict) -> dict:
    """Peak allocated bytes replayed from the trace (``device_traces``), and the
    bytes allocated and reserved in the segments at the time of the snapshot."""
    peak = cur = 0
    for trace in snap.get("device_traces", []):
        for ev in trace:
            action, size = ev.get("action"), int(ev.get("size", 0))
            if action == "alloc":
                cur += size
                peak = max(peak, cur)
            elif action == "free_completed":
                cur -= size
    segs = snap.get("segments", [])
    return {"trace_peak_allocated": peak,
            "allocated": sum(int(s.get("allocated_size", 0)) for s in segs),
            "reserved": sum(int(s.get("total_size", 0)) for s in segs)}


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
