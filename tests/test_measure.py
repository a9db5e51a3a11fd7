"""The tracker and measure_step: exact bytes against tensors summed by hand, fake == real,
any module and optimizer, the CUDA path (skipped without a GPU) and the snapshot loader."""
import pickle

import pytest

torch = pytest.importorskip("torch")

from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from memplan.measure import MemoryTracker, measure_step, state_bytes  # noqa: E402
from memplan.measure.snapshot import UnsafeSnapshotError, loads_snapshot, snapshot_peak  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64, dtype=dtype), torch.nn.ReLU(),
                               torch.nn.Linear(64, 8, dtype=dtype))


def mse(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def test_any_module_optimizer_and_loss_exact_persistent_bytes():
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    batch = (torch.randn(16, 32), torch.randn(16, 8))
    measure_step(model, opt, batch, mse)  # creates the state
    m = measure_step(model, opt, batch, mse)
    n = 32 * 64 + 64 + 64 * 8 + 8
    assert m.persistent == {"parameters": 4 * n, "gradients": 4 * n,
                            "optimizer_states": 2 * 4 * n + 4 * 4,  # 2 moments + 4 fp32 step counters
                            "projectors": 0}
    for phase in ("forward", "backward", "optimizer_step"):
        ph = m.phases[phase]
        assert ph["total"] == sum(v for k, v in ph.items() if k != "total")
        assert ph["parameters"] == 4 * n
    # the forward saves the input of each layer and the ReLU output: x (16x32), h (16x64) twice at most
    assert m.phases["forward"]["gradients"] == 0
    assert m.phases["optimizer_step"]["gradients"] == 4 * n
    assert m.peak_phase in m.phases


def test_tracker_counts_what_is_alive_and_frees_it():
    tr = MemoryTracker()
    with tr:
        tr.set_phase("forward")
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.empty(500, dtype=torch.bfloat16)  # 1000 bytes
        assert tr.total == 5000 and tr.current["temporaries"] == 5000
        tr.track(a, "activations")
        assert tr.current["activations"] == 4000
        del a
        assert tr.total == 1000
        c = b.view(10, 50)  # a view allocates nothing
        assert tr.total == 1000
        del b, c
    assert tr.peaks["forward"]["total"] == 5000
    assert tr.total == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_and_real_measure_the_same_bytes(dtype):
    """The grid measures 1B/7B models under FakeTensorMode: the bundled model's step
    must measure byte for byte the same as with real tensors."""
    import contextlib

    from memplan.models import build_model
    from test_models import TINY

    def run(fake):
        with FakeTensorMode() if fake else contextlib.nullcontext():
            model = build_model(TINY, dtype=dtype)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
            ids = torch.zeros(2, 16, dtype=torch.long)
            batch = {"input_ids": ids, "labels": ids.clone()}
            measure_step(model, opt, batch)
            return measure_step(model, opt, batch)
    real, fake = run(False), run(True)
    assert real.phases == fake.phases and real.persistent == fake.persistent and real.saved == fake.saved


def test_state_bytes_dedupes_shared_storages_and_finds_projectors():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = torch.optim.SGD([p], lr=0.1)
    shared = torch.zeros(10)
    opt.state[p] = {"exp_avg": torch.zeros(4, 4), "qmap": shared, "qmap2": shared[:5], "projector": torch.zeros(4, 2)}
    assert state_bytes(opt) == {"optimizer_states": 64 + 40, "projectors": 32}


def test_layerwise_gradients_are_counted_before_the_optimizer_frees_them():
    from memplan.optim import build_optimizer
    model = mlp()
    opt = build_optimizer(model, "adamw", layerwise=True)
    batch = (torch.randn(16, 32), torch.randn(16, 8))
    measure_step(model, opt, batch, mse)
    m = measure_step(model, opt, batch, mse)
    assert m.persistent["gradients"] == 4 * 32 * 64  # the largest single gradient, never all of them
    assert all(p.grad is None for p in model.parameters())


def test_snapshot_loader_reads_plain_data_and_peak():
    snap = {"segments": [{"total_size": 2 << 20, "allocated_size": 1024}],
            "device_traces": [[{"action": "alloc", "size": 512}, {"action": "alloc", "size": 1024},
                               {"action": "free_completed", "size": 512}]]}
    loaded = loads_snapshot(pickle.dumps(snap))
    assert loaded == snap
    assert snapshot_peak(loaded) == {"trace_peak_allocated": 1536, "allocated": 1024, "reserved": 2 << 20}


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /tmp/memplan_pwned",))


@pytest.mark.parametrize("payload", [
    pickle.dumps(_Evil()),
    pickle.dumps({"segments": [], "x": _Evil()}),
    b"cbuiltins\neval\n(S'1+1'\ntR.",  # protocol 0, a global lookup by name
])
def test_snapshot_loader_refuses_a_malicious_pickle(payload, tmp_path):
    from memplan.measure.snapshot import load_snapshot
    f = tmp_path / "snap.pickle"
    f.write_bytes(payload)
    with pytest.raises(UnsafeSnapshotError, match="Refusing"):
        load_snapshot(f)
    import os
    assert not os.path.exists("/tmp/memplan_pwned")


def test_snapshot_loader_refuses_non_snapshots():
    with pytest.raises(ValueError, match="segments"):
        loads_snapshot(pickle.dumps([1, 2, 3]))


@pytest.mark.gpu
@needs_cuda
def test_cuda_step_reports_allocator_numbers_and_categories():
    model = mlp().cuda()
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    batch = (torch.randn(16, 32, device="cuda"), torch.randn(16, 8, device="cuda"))
    measure_step(model, opt, batch, mse)
    m = measure_step(model, opt, batch, mse)
    assert set(m.cuda) == {"forward", "backward", "optimizer_step"}
    for phase, stats in m.cuda.items():
        assert stats["reserved"] >= stats["allocated"] > 0
        # the tracker rounds like the caching allocator (512 B); the allocator also sees workspaces
        assert m.phases[phase]["total"] <= stats["allocated"] + (4 << 20)


@pytest.mark.gpu
@needs_cuda
def test_cuda_snapshot_file_loads_safely(tmp_path):
    from memplan.measure.snapshot import load_snapshot, record
    path = tmp_path / "snap.pickle"
    with record(path):
        x = torch.randn(1024, 1024, device="cuda")
        del x
    snap = load_snapshot(path)
    assert snapshot_peak(snap)["trace_peak_allocated"] >= 4 << 20
