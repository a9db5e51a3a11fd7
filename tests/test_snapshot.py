"""Reading CUDA memory snapshots safely, and replaying them through the allocator model.

The fixtures in tests/data/snapshots are cut from public snapshots (see
PROVENANCE.json there and make_fixtures.py): the dump unchanged, the trace's last N
events, stacks reduced to Python frames. Each is replayed exactly: every address,
every segment's block layout, the final and peak reserved bytes.
"""
import gzip
import json
import pickle
import time
from collections import OrderedDict
from pathlib import Path

import pytest
from click.testing import CliRunner

from memplan.cli.main import cli
from memplan.errors import MemplanError
from memplan.replay import replay
from memplan.snapshot import MAX_EVENTS, UnsafeSnapshotError, load, loads
from memplan.snapshot_report import analyze

DATA = Path(__file__).parent / "data" / "snapshots"
FIXTURES = sorted(p.name for p in DATA.glob("*.pickle.gz") if "expandable" not in p.name)
MiB = 1 << 20


def test_fixtures_present():
    assert len(FIXTURES) == 5


@pytest.mark.parametrize("name", FIXTURES)
def test_replay_reproduces_the_real_allocator(name):
    r = replay(load(DATA / name))
    assert r.allocations > 30
    assert r.addresses_matched == r.allocations
    assert r.segments_matched == r.segments
    assert r.reserved_bytes == r.real_reserved_bytes
    assert r.peak_reserved_bytes == r.real_peak_reserved_bytes
    assert r.segment_allocs_missed == r.segment_allocs_unused == r.inconsistent_events == 0


def test_empty_cache_bursts_are_needed():
    """MercuryB1 calls torch.cuda.empty_cache() between layers: without the signal the model keeps
    the cached segments and the reserved bytes drift."""
    snap = load(DATA / "mercuryb1_tail.pickle.gz")
    assert replay(snap).empty_cache_calls >= 2
    snap.trace = [e for e in snap.trace if e.action != "segment_free"]
    r = replay(snap)
    assert r.peak_reserved_bytes > r.real_peak_reserved_bytes or r.addresses_matched < r.allocations


def _snap(segments, trace, settings=None):
    raw = {"segments": segments, "device_traces": [trace]}
    if settings is not None:
        raw["allocator_settings"] = settings
    return pickle.dumps(raw)


def _seg(addr, size, blocks):
    return {"address": addr, "total_size": size, "stream": 0, "segment_type": "large",
            "blocks": [{"address": a, "size": s, "requested_size": s, "state": st} for a, s, st in blocks]}


def test_a_pre_trace_block_learns_its_end_from_the_trace():
    """A block allocated before the trace (3 MiB requested) really held 3.5 MiB: its 0.5 MiB remainder
    was too small to split. An allocation at 3.5 MiB shows it; the model moves the boundary."""
    base = 1 << 32
    trace = [{"action": "free_completed", "addr": base + 8 * MiB, "size": 12 * MiB, "stream": 0},
             {"action": "alloc", "addr": base + int(3.5 * MiB), "size": 4 * MiB, "stream": 0},
             {"action": "free_completed", "addr": base, "size": 3 * MiB, "stream": 0}]
    seg = _seg(base, 20 * MiB, [(base, int(3.5 * MiB), "inactive"), (base + int(3.5 * MiB), 4 * MiB,
                                "active_allocated"), (base + int(7.5 * MiB), int(12.5 * MiB), "inactive")])
    r = replay(loads(_snap([seg], trace)))
    assert (r.addresses_matched, r.allocations, r.start_blocks_extended) == (1, 1, 1)
    assert r.segments_matched == 1


def test_refuses_globals():
    with pytest.raises(UnsafeSnapshotError, match="collections.OrderedDict"):
        loads(pickle.dumps({"segments": OrderedDict()}))


def test_refuses_negative_sizes():
    with pytest.raises(MemplanError, match="negative"):
        loads(_snap([], [{"action": "alloc", "addr": 0, "size": -1 << 40, "stream": 0}]))
    with pytest.raises(MemplanError, match="negative"):
        loads(_snap([_seg(0, -5, [])], []))


def test_memo_repeated_trace_is_refused_without_walking_it():
    """One 10^4-event list repeated 10^4 times by memo reference: a small file, 10^8 events."""
    events = [{"action": "alloc", "addr": i * 512, "size": 512, "stream": 0} for i in range(10_000)]
    data = gzip.compress(pickle.dumps({"segments": [], "device_traces": [events] * 10_000}))
    assert len(data) < 400_000
    t0 = time.process_time()
    with pytest.raises(MemplanError, match="events"):
        loads(data)
    assert time.process_time() - t0 < 5  # bounded by the file size, not by 10^8 (a generous bound)
    assert 10_000 * 10_000 > MAX_EVENTS


def test_not_a_snapshot():
    for data in (b"garbage", pickle.dumps([1, 2]), gzip.compress(b"\x80\x04K\x01."), b"\x1f\x8b broken"):
        with pytest.raises(MemplanError):
            loads(data)


def test_analysis_of_a_training_step():
    a = analyze(load(DATA / "silmont2000_full.pickle.gz"))
    assert a["reserved_bytes"] == 3_781_165_056 and a["allocated_bytes"] == 31_719_936  # PROVENANCE.md
    assert a["peak_reserved_bytes"] == a["reserved_bytes"]
    f = a["fragmentation"]
    assert f["bytes"] == f["in_used_segments"] + f["in_free_segments"] == f["small_pool"] + f["large_pool"]
    assert sum(a["categories_final"].values()) == a["allocated_bytes"]
    assert a["categories_final"]["gradients"] > 0  # backward outputs kept after the backward
    assert a["largest_blocks"][0]["size"] == max(b["size"] for b in a["largest_blocks"])


def test_cli_replay_json_shape():
    res = CliRunner().invoke(cli, ["snapshot", str(DATA / "wedsonlin_tail.pickle.gz"), "--replay", "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert set(body) == {"snapshot", "replay"}
    assert set(body["snapshot"]) == {"reserved_bytes", "allocated_bytes", "peak_reserved_bytes"}
    assert set(body["replay"]) == {"reserved_bytes", "peak_reserved_bytes", "allocations", "addresses_matched",
                                   "segments", "segments_matched"}
    assert body["replay"]["reserved_bytes"] == body["snapshot"]["reserved_bytes"]
    assert body["replay"]["addresses_matched"] == body["replay"]["allocations"]


def test_cli_text_with_an_estimate():
    res = CliRunner().invoke(cli, ["snapshot", str(DATA / "silmont2000_full.pickle.gz"), "--replay",
                                   "--model", "llama-60m", "--method", "galore", "--rank", "64"])
    assert res.exit_code == 0, res.output
    for text in ("Fragmentation", "Largest live blocks", "estimate (", "addresses 36/36 matched"):
        assert text in res.output


def test_expandable_segments_are_analysed_not_replayed():
    """Constructor-Sun's Qwen3 run used expandable_segments:True (segment_map events): the analysis
    works, the replay says plainly that the model does not follow that setting."""
    path = DATA / "constructor_expandable_tail.pickle.gz"
    snap = load(path)
    assert snap.expandable and snap.device == 0 and snap.devices == [0, 1, 2]
    a = analyze(snap)  # the device with the longest trace (cuda:0) and its own two expandable segments
    assert a["reserved_bytes"] == 8_541_700_096 and a["segments"] == 2
    with pytest.raises(MemplanError, match="expandable_segments"):
        replay(snap)
    res = CliRunner().invoke(cli, ["snapshot", str(path), "--replay", "--json"])
    assert res.exit_code == 2 and "expandable_segments" in res.output and res.output.count("\n") == 1


def test_cli_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "x.pickle"
    bad.write_bytes(pickle.dumps({"segments": OrderedDict()}))
    for path in (bad, tmp_path / "missing.pickle"):
        res = CliRunner().invoke(cli, ["snapshot", str(path)])
        assert res.exit_code == 2 and res.output.startswith("Error: ") and res.output.count("\n") == 1


H200 = Path(__file__).parents[1] / "benchmarks" / "results" / "cuda_snapshots"


def test_real_h200_step_replays_and_splits_like_the_estimate():
    """A known training step recorded on an H200 (benchmarks/cuda_check.py: llama-1b, HF class,
    torch.optim.AdamW(fused=True), batch 1 x 512, bf16; complete trace from an empty allocator)."""
    import memplan
    snap = load(H200 / "llama-1b__adamw__torch-fused.pickle.gz")
    r = replay(snap)
    assert (r.addresses_matched, r.segments_matched) == (r.allocations, r.segments)
    assert r.peak_reserved_bytes == r.real_peak_reserved_bytes == 11_989_417_984  # cuda_check.json: max reserved
    a = analyze(snap)["categories_at_peak"]
    est = memplan.estimate("llama-1b", "adamw", impl="torch-fused", batch_size=1, seq_len=512)
    ph = est.phases["optimizer_step"]
    # blocks are whole multiples of 512 B: within 512 B per tensor of the exact tensor bytes
    assert 0 <= a["parameters"] - ph["parameters"] < 512 * 200  # every weight, from module construction frames
    assert 0 <= a["optimizer_states"] - ph["optimizer_states"] < 512 * 400  # two AdamW moments (_init_group)
    assert 0 <= a["gradients"] - ph["gradients"] <= 64 << 20  # + the autograd thread's 32 MiB cuBLAS workspace


def test_gzip_bomb_is_refused_at_the_cap_without_inflating_it_all():
    """A 20 KB gzip that inflates to 20 MiB: an upload to the dashboard stops at 16 MiB."""
    import gzip as _gzip

    from memplan.errors import MemplanError
    from memplan.snapshot import UPLOAD_MAX_BYTES, loads
    bomb = _gzip.compress(b"\0" * (20 << 20), compresslevel=9)
    assert len(bomb) < 64 << 10
    with pytest.raises(MemplanError, match="larger than 16 MiB uncompressed"):
        loads(bomb, UPLOAD_MAX_BYTES)
