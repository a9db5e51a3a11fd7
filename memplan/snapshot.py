"""Read a CUDA memory snapshot (``torch.cuda.memory._dump_snapshot``) safely, without torch.

    snap = load("my_run.pickle")          # plain or gzip-compressed
    snap.segments, snap.trace, snap.settings

Snapshots are pickles, and unpickling runs whatever callables the file names, so
the reader refuses every global: a genuine snapshot holds only dicts, lists,
strings, numbers, booleans and None, which pickle builds without looking
anything up.

The cost of reading is bounded by the file's real size. A pickle can repeat one
object by memo reference, so a 400 KB file can hold a list of 10^4 traces that
are all the same 10^4-event list: a walk over traces x events would be 10^8
steps. The reader therefore counts what it is about to walk from the list
lengths first (no iteration) and refuses past ``MAX_EVENTS`` trace events or
``MAX_BLOCKS`` segment blocks; a frame list is looked at once however many
records share it. Sizes and addresses must be non-negative integers below 2^63.
"""
from __future__ import annotations

import gzip
import io
import pickle
import zlib
from dataclasses import dataclass, field

from memplan.errors import MemplanError

__all__ = ["load", "loads", "Snapshot", "SnapSegment", "SnapBlock", "Event", "UnsafeSnapshotError",
           "MAX_BYTES", "UPLOAD_MAX_BYTES", "MAX_EVENTS", "MAX_BLOCKS"]

# Decompressed pickle bytes. The public snapshots we know are 4 MB at most; a pickle's objects can take
# 15x its bytes in memory (one-character strings), so the cap is what bounds the reader's memory.
MAX_BYTES = 128 << 20  # a file the user reads with `memplan snapshot` (their own run): 30x the largest known
UPLOAD_MAX_BYTES = 16 << 20  # an upload to a served dashboard: a few hundred MB of objects at worst
MAX_EVENTS = 2_000_000  # trace events, all devices, counted with repeats (a 200,000-entry ring holds 10x less)
MAX_BLOCKS = 1_000_000  # blocks, all segments
MAX_VALUE = 1 << 63  # a size or address at or past this is not a CUDA one
ALLOCATED_STATES = ("active_allocated", "active_pending_free")


class UnsafeSnapshotError(MemplanError):
    """The file asks pickle to import or call something: not a plain memory snapshot."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise UnsafeSnapshotError(
            f"Refusing to load the snapshot: it references {module}.{name}. A CUDA memory snapshot holds only "
            "plain data; this file could run code when unpickled.")

    def persistent_load(self, pid):
        raise UnsafeSnapshotError("Refusing to load the snapshot: it uses pickle persistent ids")


@dataclass(frozen=True)
class SnapBlock:
    addr: int
    size: int  # the block's bytes (the request rounded, plus any unsplit remainder)
    requested: int
    allocated: bool  # active_allocated or active_pending_free
    frames: object = None  # the file's own frame list (not copied)


@dataclass(frozen=True)
class SnapSegment:
    addr: int
    size: int
    stream: int
    small: bool  # the small pool (2 MiB segments for requests of at most 1 MiB)
    expandable: bool
    blocks: tuple
    allocated: int  # bytes in allocated blocks (allocated_size when the dump lists no blocks)


@dataclass(frozen=True)
class Event:
    action: str  # alloc, free_requested, free_completed, segment_alloc, segment_free, segment_map, oom, snapshot...
    addr: int
    size: int
    stream: int
    frames: object = None


@dataclass
class Snapshot:
    segments: list
    trace: list  # events of the device with the longest trace
    device: int
    settings: dict | None  # allocator_settings (absent before torch 2.1)
    devices: list = field(default_factory=list)  # devices that have segments or events

    @property
    def reserved_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def allocated_bytes(self) -> int:
        return sum(s.allocated for s in self.segments)

    @property
    def expandable(self) -> bool:
        return any(s.expandable for s in self.segments) or bool((self.settings or {}).get("expandable_segments"))


def _num(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemplanError(f"Not a CUDA memory snapshot: {what} is {type(value).__name__} {value!r:.40}, "
                           "not an integer")
    if value < 0:
        raise MemplanError(f"Not a CUDA memory snapshot: {what} is negative ({value}); sizes and addresses "
                           "are never negative")
    if value >= MAX_VALUE:
        raise MemplanError(f"Not a CUDA memory snapshot: {what} is {value}, past 2^63")
    return value


def _dict(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise MemplanError(f"Not a CUDA memory snapshot: {what} is a {type(value).__name__}, not a dict")
    return value


def _list(value, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise MemplanError(f"Not a CUDA memory snapshot: {what} is a {type(value).__name__}, not a list")
    return value


def _too_large(max_bytes: int, what: str) -> MemplanError:
    hint = ("; read it with 'memplan snapshot FILE' on your own machine" if max_bytes < MAX_BYTES
            else "; record fewer events (_record_memory_history(max_entries=...))")
    what = f" {what}" if what else ""
    return MemplanError(f"The snapshot is larger than {max_bytes >> 20} MiB{what}: refusing to read it{hint}")


def _decompress(data: bytes, max_bytes: int) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:  # inflated in pieces and stopped at the cap: a gzip bomb costs at most max_bytes
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise MemplanError(f"Not a CUDA memory snapshot: broken gzip data ({e})") from None
    if len(out) > max_bytes:
        raise _too_large(max_bytes, "uncompressed")
    return out


def loads_raw(data: bytes, max_bytes: int = MAX_BYTES) -> dict:
    """The file's dict, unpickled with every global refused (gzip is undone first).

    ``max_bytes``: the largest pickle accepted, before and after decompression."""
    if len(data) > max_bytes:
        raise _too_large(max_bytes, "")
    data = _decompress(data, max_bytes)
    try:
        raw = _PlainUnpickler(io.BytesIO(data)).load()
    except UnsafeSnapshotError:
        raise
    except RecursionError:
        raise MemplanError("Not a CUDA memory snapshot: nested too deeply") from None
    except Exception as e:  # a broken pickle can raise almost anything (UnpicklingError, EOFError, ValueError...)
        raise MemplanError(f"Not a CUDA memory snapshot: the pickle does not load ({type(e).__name__}: "
                           f"{str(e)[:120]})") from None
    if not isinstance(raw, dict) or "segments" not in raw:
        raise MemplanError("Not a CUDA memory snapshot: expected a dict with 'segments' "
                           "(written by torch.cuda.memory._dump_snapshot)")
    return raw


def _segment(i: int, s) -> SnapSegment:
    s = _dict(s, f"segment {i}")
    addr = _num(s.get("address", 0), f"segment {i} address")
    size = _num(s.get("total_size", 0), f"segment {i} total_size")
    blocks, at = [], addr
    for j, b in enumerate(_list(s.get("blocks", []), f"segment {i} blocks")):
        b = _dict(b, f"segment {i} block {j}")
        bsize = _num(b.get("size", 0), f"segment {i} block {j} size")
        baddr = _num(b.get("address", at), f"segment {i} block {j} address")
        state = b.get("state")
        blocks.append(SnapBlock(baddr, bsize, _num(b.get("requested_size", bsize), f"segment {i} block {j} "
                                                   "requested_size"), state in ALLOCATED_STATES, b.get("frames")))
        at = baddr + bsize
    kind = s.get("segment_type")
    small = kind == "small" if kind in ("small", "large") else size == 2 << 20
    allocated = sum(b.size for b in blocks if b.allocated) if blocks else \
        _num(s.get("allocated_size", 0), f"segment {i} allocated_size")
    return SnapSegment(addr, size, _num(s.get("stream", 0), f"segment {i} stream"), small,
                       bool(s.get("is_expandable", False)), tuple(blocks), allocated)


def _event(i: int, e) -> Event:
    e = _dict(e, f"trace event {i}")
    action = e.get("action")
    if not isinstance(action, str):
        raise MemplanError(f"Not a CUDA memory snapshot: trace event {i} has no action")
    return Event(action, _num(e.get("addr", 0), f"trace event {i} addr"), _num(e.get("size", 0), f"trace event "
                 f"{i} size"), _num(e.get("stream", 0), f"trace event {i} stream"), e.get("frames"))


def from_dict(raw: dict) -> Snapshot:
    """Check a raw snapshot dict and put it in typed records, in time linear in its real size."""
    segments = _list(raw.get("segments"), "'segments'")
    traces = _list(raw.get("device_traces", []), "'device_traces'")
    n_blocks = sum(len(_list(_dict(s, "a segment").get("blocks", []), "a segment's blocks")) for s in segments)
    n_events = sum(len(_list(t, "a device trace")) for t in traces)
    if len(segments) + n_blocks > MAX_BLOCKS:
        raise MemplanError(f"The snapshot holds {n_blocks:,} blocks in {len(segments):,} segments, more than the "
                           f"{MAX_BLOCKS:,} memplan reads (a pickle can repeat one list by reference)")
    if n_events > MAX_EVENTS:
        raise MemplanError(f"The snapshot's traces hold {n_events:,} events, more than the {MAX_EVENTS:,} memplan "
                           "reads (a pickle can repeat one list by reference; record fewer with "
                           "_record_memory_history(max_entries=...))")
    segs = [_segment(i, s) for i, s in enumerate(segments)]
    device_of = [s.get("device", 0) for s in segments]
    lengths = [len(t) for t in traces]
    device = max(range(len(traces)), key=lambda d: (lengths[d], -d)) if traces else (device_of[0] if segs else 0)
    if isinstance(device, bool) or not isinstance(device, int):
        device = 0
    trace = [_event(i, e) for i, e in enumerate(traces[device])] if traces else []
    mine = [s for s, d in zip(segs, device_of) if d == device] if traces else segs
    settings = raw.get("allocator_settings")
    devices = sorted({d for d in device_of if isinstance(d, int)} | {d for d, n in enumerate(lengths) if n})
    return Snapshot(mine, trace, device, settings if isinstance(settings, dict) else None, devices)


def loads(data: bytes, max_bytes: int = MAX_BYTES) -> Snapshot:
    return from_dict(loads_raw(data, max_bytes))


def load(path) -> Snapshot:
    """A snapshot file (pickle, or gzip of one), read without running code."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise MemplanError(f"Cannot read the snapshot {path}: {e.strerror or e}") from None
    return loads(data)
