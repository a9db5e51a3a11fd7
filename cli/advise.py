"""`memplan advise`: what to change so that a run fits. Parses options, calls
`memplan.advisor.advise`, prints the ranked changes."""
from __future__ import annotations

import json

import click
from tabulate import tabulate

from memplan.cli.common import CONTEXT_SETTINGS, estimate_options, handle_errors
from memplan.cli.options import config_kwargs, host_ram_bytes
from memplan.errors import MemplanError
from memplan.units import GiB


def _g(n: int) -> str:
    return f"{n / GiB:,.2f}"


def _rows(options, sources: dict) -> list[list[str]]:
    """One row per option; each cost phrase ends with its source's footnote number."""
    rows = []
    for i, o in enumerate(options, 1):
        cost = "; ".join(f"{c.cost} [{sources.setdefault(c.source, len(sources) + 1)}]" for c in o.changes)
        rows.append([str(i), o.label, _g(o.required_bytes), f"{o.headroom_bytes / GiB:+,.2f}", cost])
    return rows


def advice_text(advice) -> str:
    """The advice as the CLI prints it (also used by tests)."""
    from memplan.cli.planner_tables import config_line

    a = advice
    where = f"{a.gpu.name} ({a.gpu.id}), {_g(a.capacity_bytes)} GiB usable"
    lines = [config_line(a.run.config) + f" | on {where}"]
    if a.status == "fits":
        lines.append(f"Fits: needs {_g(a.required_bytes)} GiB, headroom {_g(a.headroom_bytes)} GiB. Nothing to change.")
        return "\n".join(lines)
    if a.status == "tight":
        lines.append(f"Fits tightly: needs {_g(a.required_bytes)} GiB, headroom {_g(a.headroom_bytes)} GiB "
                     f"(under {_g(a.goal_bytes)} GiB). Changes that leave at least {_g(a.goal_bytes)} GiB free:")
    else:
        lines.append(f"Does not fit: needs {_g(a.required_bytes)} GiB, short by {_g(-a.headroom_bytes)} GiB.")
    headers = ["#", "change", "needs GiB", "headroom GiB", "cost [source]"]
    align = ("right", "left", "right", "right", "left")
    sources: dict[str, int] = {}
    if a.single:
        n = len(a.single)
        lines += ["", f"{n} single change{'s' if n > 1 else ''} that {'make' if n > 1 else 'makes'} it "
                  f"{'fit' if a.status != 'tight' else 'roomy'}, best first:", "",
                  tabulate(_rows(a.single, sources), headers, disable_numparse=True, colalign=align)]
    if not a.single or a.pairs:
        lines += ["", "No single change is enough" + (" on the same GPUs." if a.single else ".")]
        if a.pairs:
            lines += [f"The best {len(a.pairs)} pair{'s' if len(a.pairs) > 1 else ''} of changes:", "",
                      tabulate(_rows(a.pairs, sources), headers, disable_numparse=True, colalign=align)]
        else:
            lines.append("No pair of changes is enough either: a larger GPU ('memplan plan').")
    if a.not_enough:
        short = ", ".join(f"{o.label} ({o.headroom_bytes / GiB:+.2f})" for o in a.not_enough)
        lines += ["", f"Not enough alone (headroom GiB): {short}."]
    if sources:
        lines += [""] + [f"[{n}] {src}" for src, n in sources.items()]
    lines += ["", "Ranked by cost tier (same result but slower < approximation < different training run < more "
              "hardware), then headroom. Sizes: the planner's exact bisection (the size fits, one more does not)."]
    return "\n".join(lines)


@click.command(context_settings=CONTEXT_SETTINGS)
@estimate_options
@click.option("--min-headroom", type=float, default=None,
              help="GiB to keep free (default: just fit; 5% of the GPU for a run that fits tightly).")
@click.option("--json", "as_json", is_flag=True, help="Print the advice as JSON (bytes).")
@handle_errors
def advise(min_headroom, as_json, **opts):
    """What to change so that a run fits: the single changes, ranked, with headroom and cost.

    For a run that does not fit (or fits with under 5% free), every single change that
    makes it fit: checkpointing, per-layer update, 8-bit states, a smaller batch,
    sequence or rank (the largest that fits, by exact bisection), another projection
    method, more GPUs. Each with its headroom and its cost in one phrase with its source.
    When no single change is enough, the best pairs.

    \b
    Example:
      memplan advise --model llama-7b --method golore --rank 128 --gpu rtx-4090
      memplan advise --model llama-7b --method adamw --gpu rtx-4090 --json
    """
    from memplan.advisor import advise as run

    if not opts.get("gpu"):
        raise MemplanError("advise needs a GPU: add --gpu rtx-4090 (see 'memplan gpus').")
    if min_headroom is not None and min_headroom < 0:
        raise MemplanError(f"--min-headroom must be 0 or more GiB, got {min_headroom}.")
    advice = run(opts["model"], opts["gpu"], opts["method"], gpu_file=opts.get("gpu_file"),
                 min_headroom=None if min_headroom is None else int(min_headroom * GiB),
                 host_ram=host_ram_bytes(opts), **config_kwargs(opts))
    click.echo(json.dumps(advice.to_dict(), indent=2) if as_json else advice_text(advice))


COMMANDS = [advise]
