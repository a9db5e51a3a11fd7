"""validate --reserved: the allocation sequence of measured steps, replayed through the
CUDA caching-allocator model."""
import pytest

torch = pytest.importorskip("torch")

from memplan.measure.step import measure_step  # noqa: E402
from memplan.measure.tracker import AllocationLog  # noqa: E402
from memplan.replay import replay_log  # noqa: E402

MiB = 1 << 20


def test_replay_log_hand_worked():
    events = [("phase", "forward", 0), ("alloc", 0, 3 * MiB), ("alloc", 1, 100), ("alloc", 2, 12 * MiB),
              ("free", 0, 0), ("alloc", 3, 2 * MiB), ("phase", None, 0)]
    r = replay_log(events)
    # 3 MiB opens a 20 MiB segment; 100 B a 2 MiB small one; 12 MiB fits the 17 MiB remainder (split: 5 MiB
    # stays free); the 2 MiB request then best-fits the freed 3 MiB block, and its 1 MiB rest is not split
    assert r["max_reserved"] == (20 + 2) * MiB and r["segments"] == 2
    assert r["max_allocated"] == 3 * MiB + 512 + 12 * MiB
    assert r["allocations"] == 4


def test_log_follows_every_storage_of_a_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    x = torch.randn(64, 256)
    log = AllocationLog()
    loss = lambda m, b: m(b).square().mean()  # noqa: E731
    m0 = measure_step(model, opt, x, loss, alloc_log=log)
    m1 = measure_step(model, opt, x, loss, alloc_log=log)
    allocs = [e for e in log.events if e[0] == "alloc"]
    frees = {e[1] for e in log.events if e[0] == "free"}
    live = sum(n for _, i, n in allocs if i not in frees)
    params = sum(p.numel() * 4 for p in model.parameters())
    n = len(list(model.parameters()))
    assert live == params + 2 * params + x.numel() * 4 + 4 * n  # weights, two moments, the batch, 0-d fp32 steps
    r = replay_log(log.events)
    assert r["max_allocated"] >= m1.peak_bytes and r["max_reserved"] >= r["max_allocated"]
    assert m0.peak_bytes >= m1.peak_bytes - 1024


def test_validate_reserved_fake_step():
    from memplan.measure.validate import ValidateConfig, validate
    v = validate(ValidateConfig(model="llama-60m", method="adamw", batch_size=1, seq_len=64, device="fake"),
                 reserved=True).to_dict()
    r = v["measured"]["reserved"]
    assert r["max_reserved"] >= r["max_allocated"] >= v["measured"]["peak_bytes"]
    assert r["max_reserved"] % (2 * MiB) == 0  # whole segments
