"""Frozen records made and looked up fast: the estimator's hot path (100,000 estimates a second,
issue 14) builds a TrainingConfig and an Estimate per call and keys its tables by profiles.

- ``cached_hash``: a frozen dataclass's generated ``__hash__`` hashes every field again on each
  lookup (0.27 us for a ModelProfile, as much as the rest of a table lookup); this keeps it in
  the instance.
- ``local_caches``: what an instance keeps for itself (its hash, a table's key) stays out of its
  pickled state: string hashes differ from one process to the next, and validation sends
  profiles to worker processes.
- ``new``: a frozen dataclass's generated ``__init__`` sets each field with its own
  ``object.__setattr__`` (2.6 us for TrainingConfig's 23); this fills the instance's dict at once,
  with the same defaults. It runs no ``__post_init__``: the caller runs the checks.
"""
from __future__ import annotations

from dataclasses import MISSING, fields


def cached_hash(cls):
    """Class decorator, applied above ``@dataclass(frozen=True)``: the generated hash, kept."""
    fields_hash = cls.__hash__

    def __hash__(self):
        try:
            return self.__dict__["_hash"]
        except KeyError:
            h = fields_hash(self)
            object.__setattr__(self, "_hash", h)
            return h

    cls.__hash__ = __hash__
    return local_caches(cls)


def local_caches(cls):
    """Class decorator: what an instance keeps for itself under names that start with '_' (its hash,
    a table's key, a looked-up part) stays out of its pickled and copied state."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    cls.__getstate__ = __getstate__
    return cls


_DEFAULTS: dict[type, dict] = {}


def new(cls, values: dict, defaults: bool = True):
    """An instance of the frozen dataclass ``cls`` with ``values`` (field names, checked by the
    caller, and values for the instance's own caches) over the fields' defaults (plain defaults: no
    default factories); ``defaults=False``: ``values`` has every field, and becomes the instance's
    dict (the caller hands it over: one dict made, not two)."""
    obj = _object_new(cls)
    if defaults:
        fill = _DEFAULTS.get(cls)
        if fill is None:
            fill = _DEFAULTS[cls] = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
            assert all(f.default_factory is MISSING for f in fields(cls)), cls
        d = fill.copy()
        d.update(values)
        values = d
    _object_setattr(obj, "__dict__", values)
    return obj


_object_new, _object_setattr = object.__new__, object.__setattr__
