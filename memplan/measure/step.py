"""Measure one training step of any model, optimizer and batch, by phase and category."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from memplan.measure.tracker import CATEGORIES, MemoryTracker, quant_state_tensors, state_bytes, tensor_bytes

__all__ = ["StepMeasurement", "measure_step", "default_loss"]


@dataclass
class StepMeasurement:
    """What one step used.

    ``phases[phase]`` maps each category (and ``"total"``) to bytes at the
    moment that phase peaked. ``persistent`` holds the exact totals of the
    long-lived categories, summed straight from the tensors: parameters,
    gradients (the most alive at once), optimizer_states and projectors (after
    the step). ``cuda`` holds the CUDA allocator's numbers per phase when the
    model is on a GPU.
    """

    phases: dict[str, dict[str, int]]
    persistent: dict[str, int]
    cuda: dict[str, dict[str, int]] = field(default_factory=dict)
    saved: int = 0  # activation bytes alive at the end of the forward (what backward holds on to)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: self.phases[p]["total"])

    @property
    def peak_bytes(self) -> int:
        return self.phases[self.peak_phase]["total"]

    def to_dict(self) -> dict:
        return {"phases": self.phases, "persistent": self.persistent, "cuda": self.cuda, "saved": self.saved,
                "peak_phase": self.peak_phase, "peak_bytes": self.peak_bytes}


def default_loss(model, batch):
    """``model(**batch)``, ``model(*batch)`` or ``model(batch)``; takes ``.loss`` if present."""
    if isinstance(batch, dict):
        out = model(**batch)
    elif isinstance(batch, (list, tuple)):
        out = model(*batch)
    else:
        out = model(batch)
    if hasattr(out, "loss"):
        out = out.loss
    elif isinstance(out, dict):
        out = out["loss"]
    elif isinstance(out, (list, tuple)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise ValueError("the loss must be a scalar tensor; pass loss_fn=(model, batch) -> loss")
    return out


class _CudaStats:
    """Per-phase ``max_memory_allocated`` / ``max_memory_reserved`` on one CUDA device."""

    def __init__(self, device):
        self.device = device
        self.phases: dict[str, dict[str, int]] = {}
        self.phase = None

    def set_phase(self, phase):
        if self.phase is not None:
            torch.cuda.synchronize(self.device)
            self.phases[self.phase] = {
                "allocated": torch.cuda.max_memory_allocated(self.device),
                "reserved": torch.cuda.max_memory_reserved(self.device)}
        self.phase = phase
        if phase is not None:
            torch.cuda.reset_peak_memory_stats(self.device)


def _tensors(batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            yield from _tensors(v)


def measure_step(model: torch.nn.Module, optimizer, batch, loss_fn=None, *,
                 phase_names=("forward", "backward", "optimizer_step"),
                 autocast_dtype: torch.dtype | None = None, round_to: int | None = None,
                 after_step=None, alloc_log=None) -> StepMeasurement:
    """Run one training step (forward, backward, ``optimizer.step()``,
    ``zero_grad``) and measure it by phase and category.

    Works for any ``nn.Module`` and optimizer, on real CPU or CUDA tensors, and
    under an active ``FakeTensorMode`` (build model, optimizer and batch inside
    it). ``loss_fn(model, batch)`` returns the scalar loss (default:
    ``default_loss``). A layer-wise optimizer that steps inside backward is
    measured in the backward phase. ``after_step(tracker)`` runs inside the last
    phase (e.g. a ReLoRA merge). ``round_to`` rounds each storage up (the CUDA
    caching allocator rounds to 512 bytes; default 512 on CUDA, 1 elsewhere).
    ``alloc_log``: a ``tracker.AllocationLog`` that records the order and size of
    every storage allocated and freed (for the CUDA caching-allocator replay).

    Example::

        m = measure_step(model, torch.optim.AdamW(model.parameters()), batch)
        print(m.peak_phase, m.phases[m.peak_phase])
    """
    loss_fn = loss_fn or default_loss
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    on_cuda = device.type == "cuda" and not _is_fake(params[0])
    tracker = MemoryTracker(round_to=round_to if round_to is not None else (512 if device.type == "cuda" else 1),
                            log=alloc_log)
    cuda = _CudaStats(device) if on_cuda else None
    f_name, b_name, o_name = phase_names
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())

    def phase(name):
        tracker.set_phase(name)
        if cuda is not None:
            cuda.set_phase(name)

    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    with tracker:
        tracker.watch_model(model)
        if optimizer is not None:
            tracker.watch_optimizer(optimizer)
        for t in _tensors(batch):
            tracker.track(t, "activations")
        phase(f_name)
        with amp:
            loss = loss_fn(model, batch)
        # whatever the forward left alive is held for backward
        tracker.promote("temporaries", "activations")
        saved = tracker.current["activations"]
        phase(b_name)
        loss.backward()
        del loss
        tracker.watch_grads(model)
        phase(o_name)
        if optimizer is not None:
            optimizer.step()
            tracker.watch_optimizer(optimizer)
            optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(tracker)
        phase(None)
    persistent = {
        "parameters": tensor_bytes(params + [t for p in params for t in quant_state_tensors(p)]),
        "gradients": tracker.max_gradients,
        **(state_bytes(optimizer) if optimizer is not None else {"optimizer_states": 0, "projectors": 0}),
    }
    phases = {name: {c: tracker.peaks.get(name, {}).get(c, 0) for c in (*CATEGORIES, "total")}
              for name in phase_names}
    return StepMeasurement(phases=phases, persistent=persistent,
                           cuda=cuda.phases if cuda is not None else {}, saved=saved)


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor)
