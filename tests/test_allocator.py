"""The CUDA caching-allocator model: hand-worked cases of each rule of
c10/cuda/CUDACachingAllocator.cpp (rounding, pools, best fit, split, coalesce,
empty_cache, the out-of-memory retry and the PYTORCH_CUDA_ALLOC_CONF options)."""
import pytest

from memplan.allocator import CachingAllocator, OutOfMemory, Settings, allocation_size, round_size
from memplan.errors import MemplanError

KiB, MiB = 1 << 10, 1 << 20


def test_round_size_and_segment_size():
    assert [round_size(n) for n in (0, 1, 512, 513, MiB + 1)] == [512, 512, 512, 1024, MiB + 512]
    assert allocation_size(MiB) == 2 * MiB  # small pool
    assert allocation_size(MiB + 512) == 20 * MiB  # 1-10 MiB share a 20 MiB segment
    assert allocation_size(10 * MiB) == 10 * MiB
    assert allocation_size(11 * MiB) == 12 * MiB  # rounded up to 2 MiB


def test_roundup_power2_divisions():
    four = Settings(roundup_power2_divisions=(4,) * 16)
    assert round_size(1200, four) == 1536  # at most 512 x divisions: plain 512-byte rounding
    assert round_size(4200, four) == 5120  # 4096, 5120, 6144, 7168: the next of 4 steps
    assert round_size(4200, Settings()) == 4608
    assert round_size(8192, four) == 8192  # powers of two stay
    assert round_size(5 * MiB + 1, four) == 6 * MiB  # steps of 1 MiB between 4 and 8 MiB


def test_small_pool_packs_2mib_segments():
    a = CachingAllocator()
    blocks = [a.malloc(512 * KiB) for _ in range(4)]
    assert len(a.segments) == 1 and a.reserved_bytes == 2 * MiB
    assert [b.addr - blocks[0].addr for b in blocks] == [0, 512 * KiB, MiB, 1536 * KiB]
    a.malloc(1)
    assert len(a.segments) == 2 and a.reserved_bytes == 4 * MiB


def test_large_split_threshold_and_unsplit_remainder():
    a = CachingAllocator()
    b = a.malloc(3 * MiB)
    assert a.reserved_bytes == 20 * MiB and b.size == 3 * MiB  # 17 MiB remainder split off
    c = a.malloc(int(16.5 * MiB))  # from the 17 MiB free block: 0.5 MiB left, not split (<= 1 MiB)
    assert c.addr == b.addr + 3 * MiB and c.size == 17 * MiB
    assert a.allocated_bytes == 20 * MiB and a.reserved_bytes == 20 * MiB


def test_best_fit_then_lowest_address():
    a = CachingAllocator()
    big = [a.malloc(s * MiB) for s in (12, 16, 14, 16)]  # four segments (>= 10 MiB: own segments)
    for b in big:
        a.free(b)
    got = a.malloc(13 * MiB)  # smallest free block that fits: the 14 MiB one
    assert got.addr == big[2].addr
    got2 = a.malloc(15 * MiB)  # two 16 MiB blocks: the lower address
    assert got2.addr == min(big[1].addr, big[3].addr)


def test_free_coalesces_and_empty_cache_releases_whole_segments():
    a = CachingAllocator()
    x, y, z = a.malloc(2 * MiB), a.malloc(2 * MiB), a.malloc(2 * MiB)
    a.free(y)
    assert a.layout()[x.addr] == [(2 * MiB, True), (2 * MiB, False), (2 * MiB, True), (14 * MiB, False)]
    assert a.empty_cache() == 0  # split segments stay
    a.free(x)
    a.free(z)
    assert a.layout()[x.addr] == [(20 * MiB, False)]
    assert a.empty_cache() == 20 * MiB and a.reserved_bytes == 0


def test_streams_do_not_share_blocks():
    a = CachingAllocator()
    b = a.malloc(4 * MiB, stream=0)
    a.free(b)
    a.malloc(4 * MiB, stream=7)
    assert a.reserved_bytes == 40 * MiB


def test_oom_retry_releases_cached_segments():
    a = CachingAllocator(capacity=48 * MiB)
    x = a.malloc(20 * MiB)
    y = a.malloc(20 * MiB)
    a.free(x)
    z = a.malloc(24 * MiB)  # cudaMalloc fails; release x's whole free segment; retry fits
    assert a.num_alloc_retries == 1 and a.reserved_bytes == 44 * MiB and z.size == 24 * MiB
    assert ("segment_free", x.addr, 20 * MiB) in a.events
    with pytest.raises(OutOfMemory):
        a.malloc(2 * MiB)  # a new 20 MiB segment does not fit in 48 and nothing is cached
    assert y.allocated


def test_max_split_size():
    s = Settings(max_split_size=32 * MiB)
    a = CachingAllocator(s)
    big = a.malloc(64 * MiB)
    a.free(big)
    small = a.malloc(4 * MiB)  # an oversize cached block is not split for a smaller request
    assert small.addr != big.addr and a.reserved_bytes == 84 * MiB
    b40 = a.malloc(40 * MiB)  # a 64 MiB block serves only requests less than 20 MiB smaller ...
    assert b40.addr != big.addr
    b50 = a.malloc(50 * MiB)  # ... and is then not split: the whole block is handed out
    assert b50.addr == big.addr and b50.size == 64 * MiB


def test_max_split_size_oom_releases_oversize_first():
    a = CachingAllocator(Settings(max_split_size=32 * MiB), capacity=100 * MiB)
    x = a.malloc(70 * MiB)
    keep = a.malloc(4 * MiB)  # a split 20 MiB segment stays
    a.free(x)
    a.malloc(45 * MiB)  # 70 >= 45 + 20: not reused; no room for 46 MiB more: the oversize block goes first
    assert a.num_alloc_retries == 0 and keep.allocated and a.reserved_bytes == 66 * MiB


def test_garbage_collection_threshold_needs_a_capacity():
    s = Settings(garbage_collection_threshold=0.5)
    a = CachingAllocator(s, capacity=100 * MiB)
    blocks = [a.malloc(12 * MiB) for _ in range(4)]
    for b in blocks:
        a.free(b)
    a.malloc(30 * MiB)  # reserved 48 MiB <= 50 MiB: nothing collected yet
    assert a.reserved_bytes == 78 * MiB
    a.malloc(30 * MiB)  # now past 50 MiB: cached whole segments older than average go first
    assert a.reserved_bytes < 108 * MiB and a.num_alloc_retries == 0


def test_settings_from_snapshot_and_refusals():
    assert Settings.from_snapshot(None) == Settings()
    s = Settings.from_snapshot({"max_split_size": 64 * MiB, "garbage_collection_threshold": 0.6,
                                "expandable_segments": False, "roundup_power2_divisions": {"1": 4, "2": 8}})
    assert s.max_split_size == 64 * MiB and s.roundup_power2_divisions[:3] == (4, 8, 0)
    with pytest.raises(MemplanError, match="expandable_segments"):
        Settings(expandable_segments=True)
    with pytest.raises(MemplanError):
        CachingAllocator().malloc(-1)
