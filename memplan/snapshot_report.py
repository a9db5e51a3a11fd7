"""What a CUDA memory snapshot holds: peaks, fragmentation, largest blocks, categories.

    a = analyze(memplan.snapshot.load("run.pickle"))
    a["peak_allocated_bytes"], a["fragmentation"], a["categories_at_peak"]

Allocated bytes are put in memplan's categories from the call stack recorded
with each block (``frames``), innermost first; the first rule that matches wins:

- ``gradients``: the autograd engine accumulating into ``.grad`` (AccumulateGrad), or
  a block made in the backward that outlives the next optimizer allocation (or the
  trace) or is freed by an optimizer (``zero_grad``): AccumulateGrad keeps the buffer
  the backward op made, so its stack names the op, not AccumulateGrad;
- ``optimizer_states``: allocated inside an optimizer's ``step`` (``torch/optim``,
  or any Python ``step``/``_init_group`` frame); the step's short-lived scratch
  tensors land here too when they are live at the moment looked at;
- ``temporaries``: the rest of the backward pass (autograd engine frames or a
  Python ``backward``): gradients of activations and backward scratch;
- ``parameters``: module construction and moves (any ``__init__``, ``_apply``,
  ``to``, ``cuda``, ``load_state_dict``, ``from_pretrained``...);
- ``activations``: the forward pass (a Python ``forward`` frame);
- ``other``: no recorded stack says (a snapshot recorded without stacks, data
  batches, tensors made outside these phases). When stacks were recorded with
  Python frames only (``stacks="python"``), an allocation with an empty stack was made
  by the autograd engine's thread: a backward allocation (``temporaries``, or
  ``gradients`` when it outlives the backward as above).

A block freed during the trace but allocated before it keeps the stack of its
free event. The walk over the trace costs one step per event; each distinct
frame list is read once (``_Classifier`` caches by identity), at most
``MAX_FRAMES`` frames of it.
"""
from __future__ import annotations

from collections import Counter

from memplan.allocator import round_size
from memplan.replay import start_state
from memplan.snapshot import Snapshot

SNAPSHOT_CATEGORIES = ("parameters", "gradients", "optimizer_states", "activations", "temporaries", "other")
MAX_FRAMES = 256
PARAM_FUNCS = frozenset({"_apply", "convert", "to", "cuda", "load_state_dict", "_load_from_state_dict", "from_pretrained",
                         "reset_parameters", "set_module_tensor_to_device", "_load_state_dict_into_meta_model",
                         "dispatch_model", "init_weights", "_init_weights"})


class _Classifier:
    def __init__(self, stacks_recorded: bool = False):
        self.cache: dict[int, tuple[str, str]] = {}
        self.stacks_recorded = stacks_recorded

    def __call__(self, frames) -> tuple[str, str]:
        """(category, where): where is the innermost Python frame, 'file.py:line func'."""
        if isinstance(frames, (list, tuple)) and not frames and self.stacks_recorded:
            # stacks were recorded, but this one has no frame: the autograd engine's own thread
            # (Python-only stacks, stacks="python") -- a backward allocation
            return "temporaries", "(autograd thread)"
        if not isinstance(frames, (list, tuple)) or not frames:
            return "other", ""
        key = id(frames)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = _classify(frames)
        return hit


def _classify(frames) -> tuple[str, str]:
    names, py = [], []
    for f in frames[:MAX_FRAMES]:
        if not isinstance(f, dict):
            continue
        name, filename = str(f.get("name", ""))[:200], str(f.get("filename", ""))[:300]
        names.append(name)
        if filename.endswith(".py"):
            py.append((name, filename, f.get("line", 0)))
    where = ""
    if py:
        name, filename, line = py[0]
        where = f"{filename.replace(chr(92), '/').rsplit('/', 1)[-1]}:{line} {name}"
    cpp = " ".join(names)
    if "AccumulateGrad" in cpp or any(n == "accumulate_grad" for n, _, _ in py):
        return "gradients", where
    if any(n in ("step", "_init_group") or "/optim/" in fn.replace("\\", "/") for n, fn, _ in py):
        return "optimizer_states", where
    if "autograd::Engine" in cpp or "torch::autograd::" in cpp and "Backward" in cpp or \
            any(n == "backward" or n.endswith("_backward") for n, _, _ in py):
        return "temporaries", where
    if any(n in PARAM_FUNCS or n == "__init__" for n, fn, _ in py):
        return "parameters", where
    if any(n == "forward" or n == "_call_impl" for n, _, _ in py):
        return "activations", where
    return "other", where


def analyze(snap: Snapshot, top: int = 10) -> dict:
    """Peak and final allocated and reserved bytes, fragmentation, largest blocks, categories."""
    classify = _Classifier(_stacks_recorded(snap))
    state = start_state(snap)
    cls = _event_categories(snap, classify)
    live = {a: (size, _survivor(classify(fr)[0])) for a, (size, _, fr) in state.live.items()}
    cats = Counter()
    for size, cat in live.values():
        cats[cat] += size
    allocated = sum(cats.values())
    reserved = sum(s for s, _, _ in state.segments.values())
    peak_alloc, peak_cats, peak_res = allocated, dict(cats), reserved
    for i, ev in enumerate(snap.trace):
        a = ev.action
        if a == "alloc":
            cat = cls[i]
            size = round_size(ev.size)
            live[ev.addr] = (size, cat)
            cats[cat] += size
            allocated += size
            if allocated > peak_alloc:
                peak_alloc, peak_cats = allocated, dict(cats)
        elif a == "free_completed":
            old = live.pop(ev.addr, None)
            if old is not None:
                cats[old[1]] -= old[0]
                allocated -= old[0]
        elif a == "segment_alloc":
            reserved += ev.size
            peak_res = max(peak_res, reserved)
        elif a == "segment_free":
            reserved -= ev.size
    final_alloc, final_res = snap.allocated_bytes, snap.reserved_bytes
    blocks = [(b, s) for s in snap.segments for b in s.blocks if b.allocated]
    final_cats = Counter()
    for b, _ in blocks:
        final_cats[_survivor(classify(b.frames)[0])] += b.size
    largest = sorted(blocks, key=lambda bs: -bs[0].size)[:top]
    return {
        "device": snap.device,
        "trace_events": len(snap.trace),
        "segments": len(snap.segments),
        "expandable_segments": snap.expandable,
        "allocated_bytes": final_alloc,
        "reserved_bytes": final_res,
        "peak_allocated_bytes": max(peak_alloc, final_alloc),
        "peak_reserved_bytes": max(peak_res, final_res),
        "fragmentation": fragmentation(snap),
        "largest_blocks": [{"address": b.addr, "size": b.size, "requested": b.requested,
                            "category": classify(b.frames)[0], "where": classify(b.frames)[1],
                            "segment_size": s.size} for b, s in largest],
        "categories_at_peak": {c: max(0, peak_cats.get(c, 0)) for c in SNAPSHOT_CATEGORIES},
        "categories_final": {c: final_cats.get(c, 0) for c in SNAPSHOT_CATEGORIES},
        "settings": snap.settings,
    }


def _stacks_recorded(snap: Snapshot) -> bool:
    """Whether the trace recorded stacks at all (then an empty one means the autograd thread)."""
    return any(isinstance(e.frames, (list, tuple)) and e.frames for e in snap.trace[:2000] if e.action == "alloc")


def _survivor(cat: str) -> str:
    """A backward block still live after the backward is a gradient (AccumulateGrad keeps the
    buffer the backward op made, so its stack shows the op, not AccumulateGrad)."""
    return "gradients" if cat == "temporaries" else cat


def _event_categories(snap: Snapshot, classify) -> dict:
    """{alloc event index: category}; a backward allocation that outlives the next optimizer
    allocation or the trace, or that an optimizer frees (``zero_grad``), is a gradient."""
    cls, opened, freed_at = {}, {}, {}
    for i, ev in enumerate(snap.trace):
        if ev.action == "alloc":
            cls[i] = classify(ev.frames)[0]
            opened[ev.addr] = i
        elif ev.action == "free_completed" and ev.addr in opened:
            freed_at[opened.pop(ev.addr)] = i
    next_opt, out = None, {}
    for i in sorted(cls, reverse=True):
        cat = cls[i]
        if cat == "temporaries":
            end = freed_at.get(i)
            if end is None or (next_opt is not None and end > next_opt) or \
                    classify(snap.trace[end].frames)[0] == "optimizer_states":
                cat = "gradients"
        elif cat == "optimizer_states":
            next_opt = i
        out[i] = cat
    return out


def fragmentation(snap: Snapshot, top: int = 5) -> dict:
    """Reserved minus allocated at the dump, and where it sits.

    ``in_used_segments``: free blocks inside segments that also hold live blocks; they
    stay reserved until every block of the segment is freed. ``in_free_segments``:
    whole free segments, which ``torch.cuda.empty_cache()`` would return.
    """
    used = free_segs = small = 0
    per_seg = []
    for s in snap.segments:
        free = sum(b.size for b in s.blocks if not b.allocated)
        if not s.blocks:
            free = s.size
        if free == s.size:
            free_segs += free
        else:
            used += free
        if s.small:
            small += free
        per_seg.append((free, s))
    per_seg.sort(key=lambda fs: -fs[0])
    return {"bytes": snap.reserved_bytes - snap.allocated_bytes,
            "in_used_segments": used, "in_free_segments": free_segs, "small_pool": small,
            "large_pool": used + free_segs - small,
            "largest_free_segments": [{"address": s.addr, "segment_size": s.size, "free_bytes": f,
                                       "free_blocks": sum(1 for b in s.blocks if not b.allocated)}
                                      for f, s in per_seg[:top] if f]}


def segment_map(snap: Snapshot, limit: int = 400) -> list[dict]:
    """Rows for a segment-map chart: one per block of the largest ``limit`` segments
    (segment index, offset, size, allocated, category)."""
    classify = _Classifier()
    segs = sorted(snap.segments, key=lambda s: -s.size)[:limit]
    rows = []
    for i, s in enumerate(sorted(segs, key=lambda s: s.addr)):
        for b in s.blocks:
            rows.append({"segment": i, "segment_address": s.addr, "offset": b.addr - s.addr, "size": b.size,
                         "allocated": b.allocated,
                         "category": classify(b.frames)[0] if b.allocated else "free"})
    return rows
