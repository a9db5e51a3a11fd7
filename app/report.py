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

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from memplan import CATEGORIES, MemplanError, limits

DEFAULT_REPORT = Path("benchmarks/results/validate_small.json")
REPORT_ENV = "MEMPLAN_VALIDATION_REPORT"  # another default report (set by `memplan app --report PATH`)
NO_REPORT = ("No report yet: run `memplan validate --grid small` (it writes "
             "benchmarks/results/validate_small.json), or upload a report above.")
COMPARED = tuple(c for c in CATEGORIES if c != "overhead")  # the CUDA context is not a tensor a tracker sees


@dataclass(frozen=True)
class Broken:
    """A point the report could not measure (it raised): its label and why."""

    label: str
    reason: str


@dataclass(frozen=True)
class Report:
    points: list  # [Point], measured and compared
    broken: list  # [Broken], points whose run failed (estimate and measured are null)


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
    config: dict  # the point's run (model, method, rank, ..., device), as the report gives it
    failures: tuple[str, ...] = ()  # the report's reasons for a failed point

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))[:LABEL_CHARS]

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))[:LABEL_CHARS]

    @property
    def categories(self) -> list[str]:
        return [c for c in COMPARED if c in self.estimated and c in self.measured]


def rel_error(estimated: int, measured: int) -> float:
    """(estimated - measured) / measured, as `memplan.measure` computes it (1.0 when measured is 0)."""
    if measured == 0:
        return 0.0 if estimated == 0 else 1.0
    return (estimated - measured) / measured


MAX_BYTES = 1 << 60  # an exbibyte: more than any machine holds


def _number(val, where: str) -> int:
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val <= MAX_BYTES:
        raise MemplanError(f"{where} must be a number of bytes (0 to 2^60), got {str(val)[:40]}.")
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


LABEL_CHARS = 120  # a label is a line of text; the pages escape it wherever it is shown


def _label(point: dict, index: int, name: str | None) -> str:
    return "".join(ch for ch in _raw_label(point, index, name) if ch.isprintable())[:LABEL_CHARS] or f"point {index + 1}"


def _raw_label(point: dict, index: int, name: str | None) -> str:
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
        parts += [str(cfg[k]) for k in ("precision", "device") if k in cfg]
        if parts:
            return " ".join(parts)
    return f"point {index + 1}"


def _relative(err, where: str) -> float | None:
    val = err.get("relative") if isinstance(err, dict) else err
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or abs(val) > 1e6:
        raise MemplanError(f"{where} must be a finite number (a relative error), got {str(val)[:40]}.")
    return float(val)


def _point(p, index: int, name: str | None, where: str) -> "Point | Broken":
    at = f"{where}, point {name or index + 1}"
    if not isinstance(p, dict) or "estimate" not in p or "measured" not in p:
        raise MemplanError(f"{at}: expected an object with 'estimate' and 'measured' "
                           "(the format 'memplan validate' writes).")
    failures = [str(f)[:300] for f in p["failures"][:20]] if isinstance(p.get("failures"), list) else []
    if p["estimate"] is None or p["measured"] is None:  # the run raised: memplan.measure.grid records it so
        return Broken(_label(p, index, name), "; ".join(map(str, failures)) or "the run failed")
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
    cfg = p.get("config") if isinstance(p.get("config"), dict) else {}
    return Point(_label(p, index, name), est, meas, errors, est_peak, meas_peak,
                 rel_error(est_peak, meas_peak) if peak is None else peak, passed, cfg,
                 tuple(map(str, failures)))


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def parse_report(text: "str | bytes", where: str = "report") -> Report:
    """The points of a validation report; MemplanError with one line when it is malformed."""
    # bounded: size, UTF-8, no NaN / Infinity, no runaway nesting (memplan/limits.py)
    doc = limits.parse_json(text, where, kind="the JSON report 'memplan validate' writes",
                            max_bytes=limits.REPORT_BYTES)
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
    if len(items) > limits.REPORT_POINTS:
        raise MemplanError(f"{where}: {len(items):,} points; a report holds at most {limits.REPORT_POINTS:,}.")
    parsed = [_point(p, i, name if name is None else str(name)[:LABEL_CHARS], where) for i, (name, p) in enumerate(items)]
    if not parsed:
        raise MemplanError(f"{where}: the report has no points.")
    parsed = [replace(x, label=label) for x, label in zip(parsed, _unique([x.label for x in parsed]))]
    return Report([x for x in parsed if isinstance(x, Point)], [x for x in parsed if isinstance(x, Broken)])


def default_path() -> Path:
    return Path(os.environ.get(REPORT_ENV) or DEFAULT_REPORT)


def read_default() -> tuple[Report | None, str]:
    """The default report if it exists: (points, its path), or (None, why not)."""
    path = default_path()
    if not path.is_file():
        return None, NO_REPORT if path == DEFAULT_REPORT else f"No report at {path}. {NO_REPORT}"
    return parse_report(path.read_bytes(), str(path)), str(path)


def snapshot_support() -> str | None:
    """None: snapshots are read by memplan.snapshot (core package, no torch needed)."""
    return None


def read_snapshot(data: bytes) -> dict:
    """A snapshot's summary from memplan.snapshot_report.analyze (restricted unpickler: no code runs)."""
    from memplan.snapshot import UPLOAD_MAX_BYTES, loads
    from memplan.snapshot_report import analyze

    return analyze(loads(data, UPLOAD_MAX_BYTES))
