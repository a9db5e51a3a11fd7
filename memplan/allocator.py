"""A model of PyTorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp).

Given the sequence of allocations and frees of a program, the allocator's
segments follow from its rules, so the memory a GPU *reserves* can be computed
without a GPU:

    a = CachingAllocator()
    b = a.malloc(3 << 20)          # rounded to 512 B, from a new 20 MiB segment
    a.free(b)
    a.reserved_bytes, a.peak_reserved_bytes

The rules, as the C++ source states them (names in brackets are its own):

- every request is rounded up to a multiple of 512 B [kMinBlockSize, round_size];
  with ``roundup_power2_divisions`` sizes are rounded to the next of N equal
  steps between two powers of two instead [roundup_power2_next_division];
- requests of at most 1 MiB [kSmallSize] come from the small pool, whose
  segments are 2 MiB [kSmallBuffer]; larger ones from the large pool, where a new
  segment is 20 MiB [kLargeBuffer] for requests under 10 MiB [kMinLargeAlloc]
  and the request rounded up to 2 MiB [kRoundLarge] otherwise
  [get_allocation_size];
- a free block is found by best fit within (pool, stream): the smallest free
  block at least as large, the lowest address on ties [BlockComparatorSize,
  get_free_block]; blocks of ``max_split_size`` or more serve only requests of
  at least that size and at most 20 MiB smaller [get_free_block];
- the chosen block is split, the request taking the low addresses, when the
  remainder is at least 512 B (small pool) or more than 1 MiB (large pool, and
  only for requests under ``max_split_size``) [should_split, alloc_found_block];
- a freed block merges with free neighbours of its segment [free_block,
  try_merge_blocks]; segments go back to CUDA only in ``empty_cache`` or when
  cudaMalloc fails: first the oversize blocks (only with ``max_split_size``)
  [release_available_cached_blocks], then every whole free segment
  [release_cached_blocks], then the allocation is retried once;
- with a memory fraction and ``garbage_collection_threshold`` set, whole free
  large segments older than the average are released before a cudaMalloc once
  reserved memory passes the threshold [garbage_collect_cached_blocks].

Not modelled: ``expandable_segments`` (segments that grow by mapping pages;
``Settings`` refuses it), CUDA graph private pools, ``record_stream`` delays
(a block is reused when its free completes, which is what a trace's
``free_completed`` event says) and the free-memory callbacks.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from memplan.errors import MemplanError

kMinBlockSize = 512  # all sizes are rounded to at least 512 bytes
kSmallSize = 1 << 20  # largest "small" allocation is 1 MiB
kSmallBuffer = 2 << 20  # "small" allocations are packed in 2 MiB segments
kLargeBuffer = 20 << 20  # requests between 1 and 10 MiB may use a 20 MiB segment
kMinLargeAlloc = 10 << 20
kRoundLarge = 2 << 20  # large segments are rounded up to 2 MiB
NO_SPLIT_LIMIT = 1 << 64  # max_split_size unset (the C++ SIZE_MAX)
ROUNDUP_INTERVALS = 16  # roundup_power2_divisions: one setting per power of two from 1 MiB to 32 GiB


@dataclass(frozen=True)
class Settings:
    """The ``PYTORCH_CUDA_ALLOC_CONF`` options the model follows (defaults: unset)."""

    max_split_size: int = NO_SPLIT_LIMIT  # bytes; max_split_size_mb * 2**20
    roundup_power2_divisions: tuple[int, ...] = (0,) * ROUNDUP_INTERVALS  # per interval [1 MiB, 2 MiB), ...
    garbage_collection_threshold: float = 0.0  # acts only with a capacity (memory fraction) set
    expandable_segments: bool = False

    def __post_init__(self):
        if self.expandable_segments:
            raise MemplanError("expandable_segments:True is not modelled: its segments grow by mapping 2 MiB "
                               "pages instead of cudaMalloc. Replay runs with expandable_segments off.")
        if self.max_split_size <= kLargeBuffer and self.max_split_size != NO_SPLIT_LIMIT:
            raise MemplanError(f"max_split_size must be more than 20 MiB (PyTorch's own limit), "
                               f"got {self.max_split_size} bytes")
        if not 0.0 <= self.garbage_collection_threshold < 1.0:
            raise MemplanError("garbage_collection_threshold must be in [0, 1), got "
                               f"{self.garbage_collection_threshold}")

    @classmethod
    def from_snapshot(cls, settings: dict | None) -> "Settings":
        """From a snapshot's ``allocator_settings`` (absent in older torch: the defaults)."""
        if not settings:
            return cls()
        mss = settings.get("max_split_size", -1)
        divisions = settings.get("roundup_power2_divisions") or {}
        if isinstance(divisions, dict):  # {"1": n, "2": n, ..., "32768": n}, keys in MiB
            div = tuple(int(divisions.get(str(1 << i), 0)) for i in range(ROUNDUP_INTERVALS))
        else:
            div = (int(divisions),) * ROUNDUP_INTERVALS
        return cls(max_split_size=NO_SPLIT_LIMIT if mss in (-1, None) else int(mss),
                   roundup_power2_divisions=div,
                   garbage_collection_threshold=float(settings.get("garbage_collection_threshold") or 0.0),
                   expandable_segments=bool(settings.get("expandable_segments", False)))

    def divisions(self, size: int) -> int:
        log_size = size.bit_length() - 1
        index = max(0, log_size - 20)  # intervals start at 1 MiB (2**20)
        return self.roundup_power2_divisions[min(index, ROUNDUP_INTERVALS - 1)]


def round_size(size: int, settings: Settings = Settings()) -> int:
    """The block size a request of ``size`` bytes asks the pool for."""
    if size < kMinBlockSize:
        return kMinBlockSize
    div = settings.divisions(size)
    if div > 1 and size > kMinBlockSize * div:
        if size & (size - 1) == 0:
            return size
        floor = 1 << (size.bit_length() - 1)
        step = floor >> (div.bit_length() - 1)
        if step == 0:
            return floor << 1
        rounded = size & ~(step - 1)
        return size if rounded == size else rounded + step
    return -(-size // kMinBlockSize) * kMinBlockSize


def allocation_size(size: int) -> int:
    """The segment cudaMalloc'ed when no cached block fits a (rounded) request."""
    if size <= kSmallSize:
        return kSmallBuffer
    if size < kMinLargeAlloc:
        return kLargeBuffer
    return -(-size // kRoundLarge) * kRoundLarge


class Block:
    """A piece of a segment: allocated, or free and cached in its pool."""

    __slots__ = ("addr", "size", "stream", "small", "allocated", "prev", "next", "gc_base", "tag")

    def __init__(self, addr, size, stream, small):
        self.addr, self.size, self.stream, self.small = addr, size, stream, small
        self.allocated = False
        self.prev = self.next = None
        self.gc_base = 0
        self.tag = None  # the caller's label (a category, a trace address)

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None

    def __repr__(self):
        return f"Block({self.addr:#x}, {self.size}, {'alloc' if self.allocated else 'free'})"


class OutOfMemory(MemplanError):
    """cudaMalloc failed even after the allocator released its cached segments."""


@dataclass
class CachingAllocator:
    """The allocator of one device. ``capacity``: bytes cudaMalloc may hand out in
    total (``None``: unlimited), like ``set_per_process_memory_fraction``.

    ``next_segment_address``: a callable ``(size, small, stream) -> address`` that
    says where cudaMalloc places a new segment (a trace knows); by default new
    segments go above every address used so far.
    """

    settings: Settings = field(default_factory=Settings)
    capacity: int | None = None
    next_segment_address: object = None
    segments: dict = field(default_factory=dict)  # address -> first Block of the segment
    reserved_bytes: int = 0
    allocated_bytes: int = 0
    peak_reserved_bytes: int = 0
    peak_allocated_bytes: int = 0
    num_alloc_retries: int = 0
    events: list = field(default_factory=list)  # ("segment_alloc"|"segment_free", addr, size)

    def __post_init__(self):
        self._free: dict[tuple[bool, int], list] = {}  # (small, stream) -> sorted [(size, addr, Block)]
        self._top = 1 << 40
        self._gc_calls = {True: 0, False: 0}

    # -- free lists (best fit: smallest size, then lowest address) --
    def _pool(self, small, stream):
        return self._free.setdefault((small, stream), [])

    def _insert(self, b: Block):
        b.gc_base = self._gc_calls[b.small]
        bisect.insort(self._pool(b.small, b.stream), (b.size, b.addr, b))

    def _remove(self, b: Block):
        pool = self._pool(b.small, b.stream)
        i = bisect.bisect_left(pool, (b.size, b.addr))
        assert pool[i][2] is b, "free list out of order"
        del pool[i]

    def _get_free_block(self, size, small, stream):
        pool = self._pool(small, stream)
        if self.settings.garbage_collection_threshold > 0 and self.capacity is not None:
            self._gc_calls[small] += 1
        i = bisect.bisect_left(pool, (size, -1))
        if i == len(pool):
            return None
        b = pool[i][2]
        mss = self.settings.max_split_size
        if size < mss <= b.size:  # an oversize block is not split for a smaller request
            return None
        if size >= mss and b.size >= size + kLargeBuffer:
            return None
        del pool[i]
        return b

    # -- segments --
    def _cuda_malloc(self, size, small, stream):
        if self.capacity is not None and self.reserved_bytes + size > self.capacity:
            return None
        if self.next_segment_address is not None:
            addr = self.next_segment_address(size, small, stream)
        else:
            addr, self._top = self._top, self._top + size
        return self.add_segment(addr, size, small, stream)

    def add_segment(self, addr, size, small, stream=0) -> Block:
        """A new segment at ``addr``, one free block (not yet in the free list)."""
        b = Block(addr, size, stream, small)
        self.segments[addr] = b
        self._top = max(self._top, addr + size)
        self.reserved_bytes += size
        self.peak_reserved_bytes = max(self.peak_reserved_bytes, self.reserved_bytes)
        self.events.append(("segment_alloc", addr, size))
        return b

    def _release(self, b: Block):
        self._remove(b)
        del self.segments[b.addr]
        self.reserved_bytes -= b.size
        self.events.append(("segment_free", b.addr, b.size))

    def _whole_free_segments(self, small=None):
        for (is_small, _), pool in self._free.items():
            if small is None or is_small == small:
                yield from [e[2] for e in pool if not e[2].is_split()]

    def empty_cache(self) -> int:
        """Release every free, unsplit segment (``torch.cuda.empty_cache`` and the
        out-of-memory retry); returns the bytes released."""
        before = self.reserved_bytes
        for small in (False, True):  # large pool first, as release_cached_blocks
            for b in sorted(self._whole_free_segments(small), key=lambda b: (b.stream, b.size, b.addr)):
                self._release(b)
        return before - self.reserved_bytes

    def _release_available(self, size, small, stream) -> bool:
        mss = self.settings.max_split_size
        if mss == NO_SPLIT_LIMIT:
            return False
        key = max(size, mss)
        cands = sorted((b for b in self._whole_free_segments(small) if b.stream == stream),
                       key=lambda b: (b.size, b.addr))
        fit = [b for b in cands if b.size >= key]
        if fit:
            self._release(fit[0])
            return True
        released = 0
        for b in reversed(cands):  # several oversize blocks, the largest first
            if released >= key or b.size < mss:
                break
            released += b.size
            self._release(b)
        return released >= key

    def _garbage_collect(self):
        threshold = int(self.settings.garbage_collection_threshold * self.capacity)
        if self.reserved_bytes <= threshold:
            return
        target, reclaimed = self.reserved_bytes - threshold, 0
        age = {b: self._gc_calls[False] - b.gc_base for b in self._whole_free_segments(False)}
        while reclaimed < target and age:
            avg = sum(age.values()) / len(age)
            old = [b for b in sorted(age, key=lambda b: (b.stream, b.size, b.addr)) if age[b] >= avg]
            if not old:
                break
            for b in old:
                reclaimed += b.size
                del age[b]
                self._release(b)

    # -- the two public calls --
    def malloc(self, nbytes: int, stream: int = 0, tag=None) -> Block:
        if nbytes < 0:
            raise MemplanError(f"An allocation of {nbytes} bytes: sizes are never negative")
        size = round_size(nbytes, self.settings)
        small = size <= kSmallSize
        b = self._get_free_block(size, small, stream)
        if b is None:
            seg = allocation_size(size)
            if self.settings.garbage_collection_threshold > 0 and self.capacity is not None:
                self._garbage_collect()
            b = self._cuda_malloc(seg, small, stream)
            if b is None and self._release_available(size, small, stream):
                b = self._cuda_malloc(seg, small, stream)
            if b is None:
                self.empty_cache()
                self.num_alloc_retries += 1
                b = self._cuda_malloc(seg, small, stream)
            if b is None:
                raise OutOfMemory(f"CUDA out of memory (modelled): tried to allocate {seg} bytes with "
                                  f"{self.reserved_bytes} reserved of a {self.capacity}-byte capacity")
        remaining = b.size - size
        if small or self.settings.expandable_segments:
            split = remaining >= kMinBlockSize
        else:
            split = size < self.settings.max_split_size and remaining > kSmallSize
        if split:
            rest = Block(b.addr + size, remaining, stream, small)
            rest.prev, rest.next = b, b.next
            if b.next is not None:
                b.next.prev = rest
            b.next, b.size = rest, size
            self._insert(rest)
        b.allocated, b.tag = True, tag
        self.allocated_bytes += b.size
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return b

    def free(self, b: Block) -> None:
        if not b.allocated:
            raise MemplanError(f"Double free of {b}")
        b.allocated, b.tag = False, None
        self.allocated_bytes -= b.size
        for nb in (b.prev, b.next):
            if nb is not None and not nb.allocated:
                self._remove(nb)
                if nb is b.prev:
                    b.addr, b.prev = nb.addr, nb.prev
                    if nb.prev is not None:
                        nb.prev.next = b
                    else:
                        self.segments[b.addr] = b
                else:
                    b.next = nb.next
                    if nb.next is not None:
                        nb.next.prev = b
                b.size += nb.size
        self._insert(b)

    # -- state --
    def layout(self) -> dict:
        """{segment address: [(block size, allocated), ...]} in address order."""
        out = {}
        for addr in sorted(self.segments):
            b, blocks = self.segments[addr], []
            while b is not None:
                blocks.append((b.size, b.allocated))
                b = b.next
            out[addr] = blocks
        return out

    def restore_segment(self, addr: int, size: int, small: bool, stream: int, blocks) -> list:
        """Put back a segment as a snapshot shows it: ``blocks`` is [(size, allocated, tag)]
        in address order and must tile the segment. Returns the allocated Blocks."""
        if sum(s for s, _, _ in blocks) != size:
            raise MemplanError(f"Segment {addr:#x}: its blocks do not add up to its {size} bytes")
        seg = self.add_segment(addr, size, small, stream)
        self.events.pop()
        out, prev, at = [], None, addr
        for bsize, allocated, tag in blocks:
            b = seg if prev is None else Block(at, bsize, stream, small)
            b.size, b.prev = bsize, prev
            if prev is not None:
                prev.next = b
            if allocated:
                b.allocated, b.tag = True, tag
                self.allocated_bytes += bsize
                out.append(b)
            else:
                self._insert(b)
            prev, at = b, at + bsize
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        return out
