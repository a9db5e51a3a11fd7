"""Read a validation report (`memplan validate --grid ...`) for the validation page.

A report is JSON, parsed with `json` only (nothing in an uploaded file is run):
a list of points, or an object holding one under "points" / "results" /
"validations", or one point. A point is what `memplan.measure.validate` writes
(`Validation.to_dict()`): {"config", "estimate", "measured", "error", "passed"},
where estimate and measured hold bytes per category under "categories" (or
"breakdown", or directly) and "peak_bytes". The errors shown are the report's own
(`error.categories[c].relative`, `error.peak.relative`); they are only worked out
here, as (estimated - measured) / measured, when a report lacks them. Every
malformed report raises `MemplanError` with a one-line message.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from memplan import CATEGORIES, MemplanError

DEFAULT_REPORT = Path("benchmarks/results/validate_small.json")
REPORT_ENV = "MEMPLAN_VALIDATION_REPORT"  # another default report (set by `memplan app --report PATH`)
NO_REPORT = ("No report yet: run `memplan validate --grid small` (it writes "
             "benchmarks/results/validate_small.json), or upload a report above.")
COMPARED = tuple(c for c in CATEGORIES if c != "overhead")  # the CUDA context is not a tensor a tracker sees


@dataclass(frozen=True)
class Point:
    label: str
    estimated: dict[str, int]  # bytes per category
    measured: dict[str, int]
    errors: dict[str, float]  # relative error per category, (estimated - measured) / measured
    estimated_peak: int  # allocated bytes at the peak phase
    measured_peak: int
    peak_error: float
    passed: bool | None  # the report's verdict; None when it has none

    @property
    def categories(self) -> list[str]:
        return [c for c in COMPARED if c in self.estimated and c in self.measured]


def rel_error(estimated: int, measured: int) -> float:
    """(estimated - measured) / measured, as `memplan.measure` computes it (1.0 when measured is 0)."""
    if measured == 0:
        return 0.0 if estimated == 0 else 1.0
    return (estimated - measured) / measured


def _number(val, where: str) -> int:
    if isinstance(val, bool) or not isinstance(val, (int, float)) or val < 0:
        raise MemplanError(f"{where} must be a number of bytes, got {val!r}.")
    return int(val)


def _bytes_by_category(side, where: str) -> dict[str, int]:
    if not isinstance(side, dict):
        raise MemplanError(f"{where}: expected an object of bytes per category, got {type(side).__name__}.")
    for key in ("categories", "breakdown"):
        if isinstance(side.get(key), dict):
            side = side[key]
            break
    out = {c: _number(side[c], f"{where} '{c}'") for c in CATEGORIES if c in side}
    if not any(c in out for c in COMPARED):
        raise MemplanError(f"{where}: no memory category found (expected keys such as {', '.join(CATEGORIES[:3])}).")
    return out


def _peak(side: dict, cats: dict[str, int], where: str) -> int:
    for key in ("peak_bytes", "peak_allocated_bytes"):
        if key in side:
            return _number(side[key], f"{where} '{key}'")
    return sum(v for c, v in cats.items() if c in COMPARED)


def _label(point: dict, index: int, name: str | None) -> str:
    if name:
        return name
    for key in ("label", "name", "id"):
        if isinstance(point.get(key), str):
            return point[key]
    cfg = point.get("config")
    if isinstance(cfg, dict) and cfg:
        parts = [str(cfg[k]) for k in ("model", "method") if k in cfg]
        if cfg.get("rank") and cfg.get("method") not in ("adamw", "sgd", "adafactor", "adam8bit"):
            parts.append(f"r{cfg['rank']}")
        parts += [f"{short}{cfg[k]}" for k, short in (("batch_size", "b"), ("seq_len", "s")) if k in cfg]
        parts += [flag for flag in ("layerwise", "checkpointing") if cfg.get(flag)]
        if cfg.get("precision") not in (None, "bf16"):
            parts.append(str(cfg["precision"]))
        if parts:
            return " ".join(parts)
    return f"point {index + 1}"


def _relative(err, where: str) -> float | None:
    val = err.get("relative") if isinstance(err, dict) else err
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise MemplanError(f"{where} must be a number, got {val!r}.")
    return float(val)


def _point(p, index: int, name: str | None, where: str) -> Point:
    at = f"{where}, point {name or index + 1}"
    if not isinstance(p, dict) or "estimate" not in p or "measured" not in p:
        raise MemplanError(f"{at}: expected an object with 'estimate' and 'measured' "
                           "(the format 'memplan validate' writes).")
    est = _bytes_by_category(p["estimate"], f"{at} 'estimate'")
    meas = _bytes_by_category(p["measured"], f"{at} 'measured'")
    est_peak, meas_peak = _peak(p["estimate"], est, f"{at} 'estimate'"), _peak(p["measured"], meas, f"{at} 'measured'")
    error = p.get("error") if isinstance(p.get("error"), dict) else {}
    reported = error.get("categories") if isinstance(error.get("categories"), dict) else {}
    errors = {}
    for c in COMPARED:
        if c in est and c in meas:
            r = _relative(reported[c], f"{at} 'error.categories.{c}'") if c in reported else None
            errors[c] = rel_error(est[c], meas[c]) if r is None else r
    peak = _relative(error["peak"], f"{at} 'error.peak'") if "peak" in error else None
    passed = p.get("passed") if isinstance(p.get("passed"), bool) else None
    return Point(_label(p, index, name), est, meas, errors, est_peak, meas_peak,
                 rel_error(est_peak, meas_peak) if peak is None else peak, passed)


def parse_report(text: "str | bytes", where: str = "report") -> list[Point]:
    """The points of a validation report; MemplanError with one line when it is malformed."""
    try:
        doc = json.loads(text)
    except UnicodeDecodeError:
        raise MemplanError(f"{where} is not text: upload the JSON file 'memplan validate' writes.") from None
    except json.JSONDecodeError as e:
        raise MemplanError(f"{where} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None
    if isinstance(doc, dict):
        for key in ("points", "results", "validations"):
            if key in doc:
                doc = doc[key]
                break
    if isinstance(doc, dict) and "estimate" in doc and "measured" in doc:
        items = [(None, doc)]
    elif isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        items = [(None, p) for p in doc]
    else:
        raise MemplanError(f"{where}: expected a list of validation points, got {type(doc).__name__}.")
    points = [_point(p, i, name, where) for i, (name, p) in enumerate(items)]
    if not points:
        raise MemplanError(f"{where}: the report has no points.")
    return points


def default_path() -> Path:
    return Path(os.environ.get(REPORT_ENV) or DEFAULT_REPORT)


def read_default() -> tuple[list[Point] | None, str]:
    """The default report if it exists: (points, its path), or (None, why not)."""
    path = default_path()
    if not path.is_file():
        return None, NO_REPORT if path == DEFAULT_REPORT else f"No report at {path}. {NO_REPORT}"
    return parse_report(path.read_bytes(), str(path)), str(path)


SNAPSHOT_MODULE = "snapshot"  # memplan/measure/snapshot.py, owned by the measurement code
SNAPSHOT_FUNCTIONS = ("load_snapshot", "snapshot_breakdown", "read_snapshot")


def snapshot_loader():
    """memplan.measure's safe CUDA-snapshot reader (a restricted unpickler), or (None, why not).

    The module file is looked for before anything is imported: importing
    memplan.measure imports torch, which takes seconds.
    """
    if importlib.util.find_spec("torch") is None:
        return None, ("Reading a CUDA memory snapshot needs torch and memplan.measure: "
                      "pip install 'memplan[torch]'.")
    spec = importlib.util.find_spec("memplan.measure")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if any((Path(loc) / f"{SNAPSHOT_MODULE}.py").is_file() for loc in locations):
        mod = importlib.import_module(f"memplan.measure.{SNAPSHOT_MODULE}")
        for fn_name in SNAPSHOT_FUNCTIONS:
            if hasattr(mod, fn_name):
                return getattr(mod, fn_name), ""
    return None, ("Snapshot upload needs memplan.measure's safe snapshot reader (memplan.measure.snapshot), "
                  "which this install does not have yet; untrusted pickles are never opened without it.")
