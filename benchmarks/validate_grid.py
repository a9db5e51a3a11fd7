"""Run a validation grid, or re-summarize a saved report.

    python benchmarks/validate_grid.py small            # same as `memplan validate --grid small`
    python benchmarks/validate_grid.py --summarize benchmarks/results/validate_small.json

Re-summarizing rewrites the report's "summary" from its points (no re-run) and
prints the summary table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def resummarize(path: Path) -> None:
    from memplan.cli.validate import summary_table
    from memplan.measure.grid import summarize
    report = json.loads(path.read_text())
    rows, families = summarize(report["points"]), summarize(report["points"], by="family")
    listed = lambda rs: [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in rs]  # noqa: E731
    report["summary"], report["summary_families"] = listed(rows), listed(families)
    path.write_text(json.dumps(report, indent=1))
    print(summary_table(rows))
    print()
    print(summary_table(families))
    print(f"\n{report['passed']}/{report['total']} points pass; worst / median per column (exact columns in "
          f"bytes). Wall time {report['wall_seconds']:.0f} s. Report: {path}")


def main(argv):
    if argv[:1] == ["--summarize"]:
        return resummarize(Path(argv[1]))
    from memplan.cli.validate import validate
    validate.main(["--grid", argv[0] if argv else "small"], standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
