"""Replay a CUDA snapshot's trace through the allocator model and compare.

    r = replay(memplan.snapshot.load("run.pickle"))
    r.addresses_matched / r.allocations, r.segments_matched / r.segments
    r.reserved_bytes, r.peak_reserved_bytes       # the model's
    r.real_reserved_bytes, r.real_peak_reserved_bytes

A trace seldom starts from an empty allocator (recording starts after warm-up,
or the ring buffer dropped its oldest events), so the state at the trace's first
event is rebuilt first, walking the trace backwards from the dump:

- segments: those in the dump, less the ones the trace allocates, plus the ones
  it frees;
- live blocks: those allocated in the dump, less the ones the trace allocates,
  plus the ones it frees (a trace gives requested sizes: a block freed in the
  trace and allocated before it is taken as the request rounded to 512 B);
- free blocks: what is left of each segment between live blocks.

Then the trace runs forward through the model. Where cudaMalloc placed a new
segment is the one thing the model cannot know; it takes the address from the
trace's ``segment_alloc`` event (and counts a miss when it needed a segment the
trace did not allocate, or the reverse). A run of ``segment_free`` events is
``empty_cache`` or the out-of-memory retry, both of which release every whole
free segment: the model does that at the run's first event.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from memplan.allocator import CachingAllocator, Settings, kSmallSize, round_size
from memplan.errors import MemplanError
from memplan.snapshot import Snapshot


@dataclass
class StartState:
    segments: dict  # addr -> (size, small, stream)
    live: dict  # addr -> (block size, exact: bool, frames)
    inconsistent: int  # trace events that contradict the dump (dropped)


def start_state(snap: Snapshot) -> StartState:
    """The allocator's segments and live blocks at the trace's first event."""
    segs = {s.addr: (s.size, s.small, s.stream) for s in snap.segments}
    live = {b.addr: (b.size, True, b.frames) for s in snap.segments for b in s.blocks if b.allocated}
    bad = 0
    for ev in reversed(snap.trace):
        a = ev.action
        if a == "alloc":
            if live.pop(ev.addr, None) is None:
                bad += 1
        elif a == "free_completed":
            if ev.addr in live:
                bad += 1
            live[ev.addr] = (round_size(ev.size), False, ev.frames)
        elif a == "segment_alloc":
            if segs.pop(ev.addr, None) is None:
                bad += 1
        elif a == "segment_free":
            segs[ev.addr] = (ev.size, ev.size == 2 << 20, ev.stream)
    return StartState(segs, live, bad)


def _segment_blocks(addr, size, small, live_sorted):
    """[(size, allocated, trace addr)] tiling one segment at the trace's start."""
    out, at, end = [], addr, addr + size
    for baddr, (bsize, exact, _) in live_sorted:
        if baddr < at or baddr >= end:
            continue
        bsize = min(bsize, end - baddr)
        if baddr > at:
            out.append((baddr - at, False, None))
        out.append((bsize, True, baddr))
        at = baddr + bsize
    if at < end:
        gap = end - at
        # A block allocated before the trace and freed in it is known only by its request; a gap too
        # small for its pool to split off (<= 1 MiB large, < 512 B small) was part of that block.
        if out and out[-1][1] and (gap <= kSmallSize if not small else gap < 512):
            s, _, tag = out.pop()
            out.append((s + gap, True, tag))
        else:
            out.append((gap, False, None))
    return out


def build(snap: Snapshot, state: StartState, settings: Settings) -> tuple[CachingAllocator, dict]:
    alloc = CachingAllocator(settings)
    live_sorted = sorted(state.live.items())
    handles = {}
    for addr, (size, small, stream) in sorted(state.segments.items()):
        blocks = _segment_blocks(addr, size, small, live_sorted)
        for b in alloc.restore_segment(addr, size, small, stream, blocks):
            handles[b.tag] = b
    alloc.peak_reserved_bytes = alloc.reserved_bytes
    return alloc, handles


@dataclass
class Replay:
    allocations: int
    addresses_matched: int
    segments: int  # segments in the dump
    segments_matched: int  # same address, size and block layout in the model
    reserved_bytes: int
    peak_reserved_bytes: int
    allocated_bytes: int
    real_reserved_bytes: int
    real_peak_reserved_bytes: int
    real_allocated_bytes: int
    segment_allocs_missed: int  # the model needed a new segment and the trace had none at that point
    segment_allocs_unused: int  # the trace allocated a segment the model did not need
    empty_cache_calls: int
    start_blocks_extended: int  # pre-trace blocks whose true end the trace showed (see _extend_start_block)
    inconsistent_events: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _extend_start_block(alloc: CachingAllocator, addr: int, inexact: set) -> int:
    """Learn a pre-trace block's true end from the trace: an allocation at ``addr`` just past a
    still-live start block whose size was only inferred (it had absorbed an unsplittable remainder of
    at most 1 MiB, or 512 B in the small pool) shows where the block really ends."""
    seg = None
    for start, first in alloc.segments.items():
        if start <= addr < start + _segment_size(first):
            seg = first
            break
    b = seg
    while b is not None and not (b.addr <= addr < b.addr + b.size):
        b = b.next
    if b is None or b.allocated or addr == b.addr or b.prev not in inexact:
        return 0
    grow = addr - b.addr
    if grow > (kSmallSize if not b.small else 511):
        return 0
    alloc._remove(b)
    b.prev.size += grow
    alloc.allocated_bytes += grow
    b.addr, b.size = addr, b.size - grow
    alloc._insert(b)
    return 1


def _segment_size(first) -> int:
    n, b = 0, first
    while b is not None:
        n, b = n + b.size, b.next
    return n


def _real_peak_reserved(snap: Snapshot, start_reserved: int) -> int:
    cur = peak = start_reserved
    for ev in snap.trace:
        if ev.action == "segment_alloc":
            cur += ev.size
            peak = max(peak, cur)
        elif ev.action == "segment_free":
            cur -= ev.size
    return max(peak, snap.reserved_bytes)


def replay(snap: Snapshot, settings: Settings | None = None) -> Replay:
    """Rebuild the start state, run the trace through the model, compare with the dump."""
    t0 = time.perf_counter()
    if settings is None:
        settings = Settings.from_snapshot(snap.settings)
    if snap.expandable:
        raise MemplanError("This snapshot was recorded with expandable_segments:True, which memplan's allocator "
                           "model does not follow (its segments grow by mapping pages); replay is for the "
                           "default cudaMalloc segments.")
    state = start_state(snap)
    alloc, handles = build(snap, state, settings)
    start_reserved = alloc.reserved_bytes
    pending: list = []  # segment_alloc events not yet used by the model
    missed = [0]

    def next_segment(size, small, stream):
        for i, ev in enumerate(pending):
            if ev.size == size:
                return pending.pop(i).addr
        missed[0] += 1
        return None

    def place(size, small, stream):
        addr = next_segment(size, small, stream)
        if addr is None or addr in alloc.segments:
            addr = alloc._top + (2 << 20)
        return addr

    alloc.next_segment_address = place
    inexact = {b for b in handles.values() if not state.live[b.tag][1]}
    allocations = matched = unused = empties = fixes = 0
    prev_action = None
    for ev in snap.trace:
        a = ev.action
        if a == "segment_alloc":
            pending.append(ev)
        elif a == "alloc":
            if inexact:
                fixes += _extend_start_block(alloc, ev.addr, inexact)
            b = alloc.malloc(ev.size, ev.stream, tag=ev.addr)
            allocations += 1
            matched += b.addr == ev.addr
            handles[ev.addr] = b
            unused += len(pending)
            pending.clear()
        elif a == "free_completed":
            b = handles.pop(ev.addr, None)
            if b is not None and b.allocated:
                inexact.discard(b)
                alloc.free(b)
        elif a == "segment_free" and prev_action != "segment_free":
            alloc.empty_cache()
            empties += 1
        prev_action = a
    real = {s.addr: (s.size, [(b.size, b.allocated) for b in s.blocks]) for s in snap.segments}
    model = alloc.layout()
    seg_matched = sum(1 for addr, (size, blocks) in real.items()
                      if addr in model and sum(s for s, _ in model[addr]) == size and model[addr] == blocks)
    return Replay(allocations, matched, len(real), seg_matched, alloc.reserved_bytes, alloc.peak_reserved_bytes,
                  alloc.allocated_bytes, snap.reserved_bytes, _real_peak_reserved(snap, start_reserved),
                  snap.allocated_bytes, missed[0], unused, empties, fixes, state.inconsistent, time.perf_counter() - t0)


def replay_log(events, settings: Settings | None = None, capacity: int | None = None) -> dict:
    """Replay an allocation log (``("alloc", id, nbytes)``, ``("free", id, 0)``,
    ``("phase", name, 0)``; see ``memplan.measure.tracker.AllocationLog``) from an empty
    allocator on one stream. Returns the predicted ``max_memory_reserved`` and
    ``max_memory_allocated`` (block sizes, as torch counts them), per step and phase too."""
    t0 = time.perf_counter()
    alloc = CachingAllocator(settings or Settings(), capacity)
    live, step, phase, phases = {}, -1, None, {}
    n = 0

    def close():
        if phase is not None:
            phases[f"{step}:{phase}"] = {"reserved": alloc.peak_reserved_bytes, "allocated": alloc.peak_allocated_bytes}

    for kind, key, nbytes in events:
        if kind == "alloc":
            live[key] = alloc.malloc(nbytes)
            n += 1
        elif kind == "free":
            b = live.pop(key, None)
            if b is not None:
                alloc.free(b)
        elif kind == "phase":
            close()
            if key == "forward" or (key is not None and phase is None and step < 0):
                step += 1
            phase = key
            alloc.peak_allocated_bytes = alloc.allocated_bytes  # per-phase peaks, like reset_peak_memory_stats
            alloc.peak_reserved_bytes = alloc.reserved_bytes
    close()
    measured = [v for k, v in phases.items() if not k.startswith("0:")] or list(phases.values())  # after warm-up
    return {"max_reserved": max([v["reserved"] for v in measured] + [alloc.reserved_bytes]),
            "max_allocated": max([v["allocated"] for v in measured] + [alloc.allocated_bytes]),
            "phases": phases, "allocations": n, "segments": len(alloc.segments),
            "seconds": round(time.perf_counter() - t0, 3)}
