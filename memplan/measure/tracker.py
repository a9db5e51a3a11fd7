"""Track live tensor storages by memory category and record per-phase peaks.

Why not ``torch.distributed._tools.mem_tracker.MemTracker``: it attributes
memory to modules and to its own categories (no projectors, no phase for the
projection refresh), wraps modules and optimizers with hooks it owns, and
snapshots per module on every op, which is slow under FakeTensorMode on a 7B
model. memplan needs one thing: the live bytes per memplan category at the
peak of each phase of a step. This tracker uses the same two mechanisms as
MemTracker (a ``TorchDispatchMode`` that sees every tensor an op creates, and a
weak reference per ``UntypedStorage`` whose callback fires when the storage is
freed), keeps one running counter per category, and copies the counters when
the phase's total reaches a new high. It works for real tensors on any device
and for fake tensors (FakeTensorMode: enter the fake mode first, then this).

How a storage gets its category:
- ``parameters``: storages of the model's parameters (registered up front).
- ``gradients``: a parameter's ``.grad`` storage, reclassified by a
  post-accumulate-grad hook that runs before any other (so a layer-wise
  optimizer that frees the gradient in its own hook sees it counted first).
- ``optimizer_states`` / ``projectors``: tensors held in the optimizer state,
  reclassified after every optimizer step (``projectors`` for the entries the
  optimizer marks as projectors, see ``optimizer_state_tensors``).
- ``activations``: tensors created in the forward and saved for backward
  (a ``saved_tensors_hooks`` pack hook), and at the end of the forward every
  forward tensor still alive (checkpointed block inputs, the loss, the batch).
- ``temporaries``: everything else (in-flight forward tensors, gradients of
  activations during backward, the optimizer step's scratch tensors).
- ``overhead``: model buffers (RoPE ``inv_freq``) and anything registered so.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from memplan.categories import CATEGORIES, PHASES  # noqa: F401  (the estimator's: one set)

_PRIM_DEVICE = torch.ops.prim.device.default

# optimizer-state keys (or attribute names of a state object) that hold projectors
PROJECTOR_KEYS = frozenset({"projector", "P", "Q", "proj", "ortho_matrix", "projection"})


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or storage-less tensors
        return None


def _round(n: int, to: int) -> int:
    return n if to <= 1 else -(-n // to) * to


class AllocationLog:
    """The order and size of every storage allocation and free a tracker sees, across
    trackers (steps): what the CUDA caching allocator would be asked for. Entries are
    ``("alloc", id, nbytes)``, ``("free", id, 0)`` and ``("phase", name, 0)``;
    ``memplan.replay.replay_log`` runs them through the allocator model."""

    def __init__(self):
        self.events: list[tuple] = []
        self._ids = WeakIdKeyDictionary()
        self._next = 0

    def saw(self, st) -> None:
        if st in self._ids:
            return
        i = self._next
        self._next += 1
        self._ids[st] = i
        self.events.append(("alloc", i, st.nbytes()))
        weakref.finalize(st, self.events.append, ("free", i, 0)).atexit = False

    def mark(self, phase) -> None:
        self.events.append(("phase", phase, 0))


class _Info:
    __slots__ = ("nbytes", "category", "ref")

    def __init__(self, nbytes, category):
        self.nbytes, self.category, self.ref = nbytes, category, None


class MemoryTracker(TorchDispatchMode):
    """Live bytes per category; the peak of each named phase with its split.

    Use as a context manager around the step; call ``set_phase(name)`` at each
    phase boundary. ``peaks[phase]`` is ``{category: bytes, ..., "total": bytes}``
    at the moment the phase's total was highest.
    """

    def __init__(self, round_to: int = 1, log: AllocationLog | None = None):
        super().__init__()
        self.round_to = round_to
        self.log = log
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.total = 0
        self.peaks: dict[str, dict[str, int]] = {}
        self.max_gradients = 0
        self.phase: str | None = None
        self._phase_peak = -1
        self._info = WeakIdKeyDictionary()
        self._hooks = []
        self._saved_hooks = None

    # -- bookkeeping --------------------------------------------------------
    def _free(self, info, _ref):
        self.current[info.category] -= info.nbytes
        self.total -= info.nbytes

    def track(self, t, category: str, *, reclassify: bool = True) -> None:
        """Count ``t``'s storage in ``category`` (move it there if already tracked)."""
        st = _storage(t)
        if st is None:
            return
        info = self._info.get(st)
        if info is None:
            if self.log is not None:
                self.log.saw(st)
            info = _Info(_round(st.nbytes(), self.round_to), category)
            info.ref = weakref.ref(st, lambda r, i=info: self._free(i, r))
            self._info[st] = info
            self.current[category] += info.nbytes
            self.total += info.nbytes
            self._update_peak()
        elif reclassify and info.category != category:
            self.current[info.category] -= info.nbytes
            self.current[category] += info.nbytes
            info.category = category
            if category == "gradients":
                self.max_gradients = max(self.max_gradients, self.current["gradients"])

    def category_of(self, t) -> str | None:
        st = _storage(t)
        info = None if st is None else self._info.get(st)
        return None if info is None else info.category

    def _update_peak(self):
        if self.phase is not None and self.total > self._phase_peak:
            self._phase_peak = self.total
            snap = dict(self.current)
            snap["total"] = self.total
            self.peaks[self.phase] = snap
        if self.current["gradients"] > self.max_gradients:
            self.max_gradients = self.current["gradients"]

    def set_phase(self, phase: str | None) -> None:
        """Start a new phase; its peak starts from the memory live now."""
        self.phase = phase
        self._phase_peak = -1
        if self.log is not None:
            self.log.mark(phase)
        self._update_peak()

    def promote(self, src: str, dst: str) -> None:
        """Move every live storage of category ``src`` to ``dst``."""
        for info in list(self._info.values()):
            if info.category == src:
                self.current[src] -= info.nbytes
                self.current[dst] += info.nbytes
                info.category = dst

    # -- model and optimizer ------------------------------------------------
    def watch_model(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            self.track(p, "parameters")
            for t in quant_state_tensors(p):  # a quantized weight's scales are part of it
                self.track(t, "parameters")
            if p.grad is not None:
                self.track(p.grad, "gradients")
            if p.requires_grad:
                h = p.register_post_accumulate_grad_hook(self._grad_hook)
                # run before the hooks already there (a layer-wise optimizer's step). The
                # engine walks the underlying dict in insertion order, so re-insert the rest
                hooks = p._post_accumulate_grad_hooks
                rest = [(k, v) for k, v in hooks.items() if k != h.id]
                mine = hooks[h.id]
                hooks.clear()
                hooks[h.id] = mine
                hooks.update(rest)
                self._hooks.append(h)
        for b in model.buffers():
            self.track(b, "overhead", reclassify=False)

    def _grad_hook(self, p):
        if p.grad is not None:
            self.track(p.grad, "gradients")

    def watch_grads(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            if p.grad is not None:
                self.track(p.grad, "gradients")

    def watch_optimizer(self, optimizer) -> None:
        for t, cat in optimizer_state_tensors(optimizer):
            self.track(t, cat)

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    # -- TorchDispatchMode ---------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _PRIM_DEVICE:  # a device query: no storage. Under FakeTensorMode the autograd engine
            # asks it of every gradient, half of all dispatches; answer as FakeTensor does, without a
            # second trip through the mode stack
            mode = getattr(args[0], "fake_mode", None)
            if mode is not None and not mode.in_kernel_invocation:
                return args[0].fake_device
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):  # most ops: one tensor, no tree to flatten
            self.track(out, "temporaries", reclassify=False)
        else:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.track(t, "temporaries", reclassify=False)
        return out

    def _pack(self, t):
        if self.phase == "forward":
            st = _storage(t)
            info = None if st is None else self._info.get(st)
            if info is not None and info.category == "temporaries":
                self.track(t, "activations")
        return t

    def __enter__(self):
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._saved_hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        r = super().__exit__(*exc)
        self._saved_hooks.__exit__(*exc)
        self.remove_hooks()
        return r


# -- optimizer state ---------------------------------------------------------------
def quant_state_tensors(p) -> list:
    """The tensors of a bitsandbytes 4-bit weight's quantization state (absmax, code tables, offset,
    the nested absmax and code of double quantization): stored beside the packed codes, not in
    the parameter. [] for any other tensor."""
    qs = getattr(p, "quant_state", None)
    out = []
    while qs is not None:
        out += [t for t in (qs.absmax, qs.code, getattr(qs, "offset", None)) if isinstance(t, torch.Tensor)]
        qs = getattr(qs, "state2", None)
    return out


def _iter_optimizers(opt):
    """``opt`` and the per-parameter optimizers of a layer-wise wrapper."""
    seen, stack = set(), [opt]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if hasattr(o, "state") and hasattr(o, "param_groups"):
            yield o
        for attr in ("optimizers", "_optimizers", "optimizer_dict", "inner"):
            sub = getattr(o, attr, None)
            if isinstance(sub, dict):
                stack.extend(sub.values())
            elif isinstance(sub, (list, tuple)):
                stack.extend(sub)
            elif sub is not None and hasattr(sub, "param_groups"):
                stack.append(sub)


def _walk_state(value, category, out, depth=0):
    if depth > 4:
        return
    if isinstance(value, torch.Tensor):
        out.append((value, category))
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk_state(v, "projectors" if k in PROJECTOR_KEYS else category, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk_state(v, category, out, depth + 1)
    elif hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
        # a projector object (e.g. galore_torch's GaLoreProjector holds ``ortho_matrix``)
        for k, v in vars(value).items():
            _walk_state(v, "projectors" if k in PROJECTOR_KEYS else category, out, depth + 1)


def optimizer_state_tensors(optimizer) -> list[tuple[torch.Tensor, str]]:
    """Every tensor in the optimizer state with its category.

    An optimizer can say which of its tensors are projectors with a
    ``state_tensors()`` method returning ``(tensor, category)`` pairs; otherwise
    entries named in ``PROJECTOR_KEYS`` are projectors and the rest
    ``optimizer_states``.
    """
    if hasattr(optimizer, "state_tensors"):
        return list(optimizer.state_tensors())
    out: list[tuple[torch.Tensor, str]] = []
    for o in _iter_optimizers(optimizer):
        if hasattr(o, "state_tensors") and o is not optimizer:
            out.extend(o.state_tensors())
            continue
        for st in o.state.values():
            _walk_state(st, "optimizer_states", out)
    return out


def state_bytes(optimizer) -> dict[str, int]:
    """Bytes of optimizer state by category, each storage counted once."""
    seen, res = set(), {"optimizer_states": 0, "projectors": 0}
    for t, cat in optimizer_state_tensors(optimizer):
        st = _storage(t)
        if st is None:
            continue
        if id(st) in seen:  # storages are preserved objects: one id per live storage
            continue
        seen.add(id(st))
        res[cat] += st.nbytes()
    return res


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen, total = set(), 0
    for t in tensors:
        st = _storage(t)
        if st is None or id(st) in seen:
            continue
        seen.add(id(st))
        total += st.nbytes()
    return total
