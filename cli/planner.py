"""Planner commands: fit, compare, sweep, plan. Each parses options, calls one
library function (memplan/planner.py) and prints a table (cli/planner_tables.py)."""
from __future__ import annotations

import json

import click
from click.core import ParameterSource

from memplan.cli.common import (CONTEXT_SETTINGS, handle_errors, host_ram_option, memory_options, model_options,
                                run_options, shared_memory_options)
from memplan.cli.options import config_kwargs, host_ram_bytes
from memplan import limits
from memplan.errors import MemplanError
from memplan.units import GiB

NOTHING_FITS = 3  # exit code of `plan` and `fit` when no row fits (bad input is 2)

# The tables (tabulate) and the planner are imported inside each command: `memplan
# estimate` starts without them (see cli/main.py).

GPU_HELP = "GPU profile id (see 'memplan gpus'), or 'local' / 'local:N' for this machine's GPU (NVML)."


def _ints(text: str | None, what: str, bound) -> list[int] | None:
    if text is None:
        return None
    items = _names(text, what)
    if any(len(v) > 12 or not v.isdigit() for v in items):
        raise MemplanError(f"{what} must be comma-separated integers such as 1,4,16, got '{text[:80]}'.")
    return [limits.check_int(int(v), bound, f"{what} value") for v in items]


def _names(text: str | None, what: str = "--methods") -> list[str] | None:
    """A comma-separated option's values; empty or oversized lists are an error, not 'all' or 'none'."""
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise MemplanError(f"{what} is empty: give comma-separated values, or leave the option out.")
    if len(values) > limits.LIST_ITEMS:
        raise MemplanError(f"{what} has {len(values):,} values; at most {limits.LIST_ITEMS} are taken.")
    return values


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def _run_opts(f):
    """--rank, --batch-size, --seq-len (one value each) and --json."""
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON (bytes) instead of a table.")(f)
    return run_options(f)


def _accepting(model, names, kw) -> tuple[list[str], list[str]]:
    """The methods that take --offload / --loss as given, and those left out (offload: torch optimizers only)."""
    from memplan.methods import METHODS
    from memplan.planner import make_config

    names = names if names is not None else list(METHODS)
    if kw.get("offload", "none") == "none":
        return names, []
    keep, left = [], []
    for name in names:
        try:
            make_config(model, name, **{**kw, "rank": 1})
            keep.append(name)
        except MemplanError:
            left.append(name)
    if not keep:
        raise MemplanError(f"No method given takes --offload {kw['offload']}: it models torchao's "
                           "CPUOffloadOptimizer around adamw, sgd, adafactor or lora.")
    return keep, left


def _left_out_note(left: list[str], kw: dict) -> str:
    return (f"\nLeft out (they do not take --offload {kw.get('offload')}): {', '.join(left)}." if left else "")


@click.command(context_settings=CONTEXT_SETTINGS)
@model_options
@click.option("--gpu", "-g", required=True, help=GPU_HELP)
@click.option("--methods", default=None, help="Comma-separated methods (default: all; see 'memplan methods').")
@shared_memory_options
@host_ram_option
@_run_opts
@click.pass_context
@handle_errors
def fit(ctx, gpu, methods, as_json, **opts):
    """Does it fit? Every method, with and without per-layer update and checkpointing.

    For each: fits or not at --batch-size x --seq-len, the headroom, the largest
    batch at --seq-len, the largest sequence at batch 1, and for projection and
    adapter methods the largest rank. Searches bisect on the estimator. Give
    --layerwise/--no-layerwise or --checkpointing/--no-checkpointing to keep
    only one setting.

    Exit codes: 0 when at least one row fits, 3 when none does, 2 for bad input.

    \b
    Example:
      memplan fit --model llama-7b --gpu rtx-4090
      memplan fit --model llama-7b --gpu local --methods galore8bit,golore,adamw
    """
    from memplan.cli.planner_tables import fit_table
    from memplan.estimator import capacity_bytes
    from memplan.planner import fit_report, make_config, resolve_gpu

    g = resolve_gpu(gpu, opts["gpu_file"])
    kw = config_kwargs(opts)
    lw, ck = kw.pop("layerwise"), kw.pop("checkpointing")
    layerwise = (lw,) if _given(ctx, "layerwise") else (False, True)
    checkpointing = (ck,) if _given(ctx, "checkpointing") else (False, True)
    names, left_out = _accepting(opts["model"], _names(methods, "--methods"), kw)
    rows = fit_report(opts["model"], g, names, layerwise=layerwise, checkpointing=checkpointing,
                      host_ram=host_ram_bytes(opts), **kw)
    config = make_config(opts["model"], names[0], **kw)
    if as_json:
        shared = {"model": config.model.name, "precision": config.precision, "batch_size": config.batch_size,
                  "seq_len": config.seq_len}
        click.echo(json.dumps({**shared, "gpu": g.id, "gpu_name": g.name, "capacity_bytes": capacity_bytes(g),
                               "rows": [r.to_dict() for r in rows], "units": "bytes"}, indent=2))
    else:
        click.echo(fit_table(rows, g, config) + _left_out_note(left_out, kw))
    if not any(r.fits for r in rows):
        raise SystemExit(NOTHING_FITS)


@click.command(context_settings=CONTEXT_SETTINGS)
@model_options
@click.option("--methods", default=None, help="Comma-separated methods (default: all; see 'memplan methods').")
@click.option("--gpu", "-g", default=None, help="Add fit and headroom columns for this GPU. " + GPU_HELP)
@shared_memory_options
@_run_opts
@handle_errors
def compare(gpu, methods, as_json, **opts):
    """Compare methods: categories and peak per method, sorted by peak, savings vs AdamW.

    One row per method with the same model and options; the memory saved is
    AdamW's peak minus the method's, in GiB and %.

    \b
    Example:
      memplan compare --model llama-7b --rank 128 --gpu rtx-4090
      memplan compare --model llama-1b --methods adamw,galore,golore,sumo --layerwise --json
    """
    from memplan.cli.planner_tables import compare_table
    from memplan.estimator import capacity_bytes
    from memplan.planner import compare as run

    kw = config_kwargs(opts)
    names, left_out = _accepting(opts["model"], _names(methods, "--methods"), kw)
    rows = run(opts["model"], names, gpu=gpu, gpu_file=opts["gpu_file"], **kw)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    g = rows[0].estimate.gpu
    click.echo(compare_table(rows, g, capacity_bytes(g) if g is not None else None) + _left_out_note(left_out, kw))


@click.command(context_settings=CONTEXT_SETTINGS)
@model_options
@click.option("--method", default="galore", show_default=True, help="Training method (see 'memplan methods').")
@memory_options
@click.option("--ranks", default=None, help="Comma-separated ranks, e.g. 64,128,256,512 (default: 128).")
@click.option("--batch-sizes", default="1", show_default=True, help="Comma-separated micro-batch sizes.")
@click.option("--seq-lens", default="2048", show_default=True, help="Comma-separated sequence lengths.")
@click.option("--gpu", "-g", default=None, help="Mark the cells that do not fit on this GPU. " + GPU_HELP)
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV rows (bytes and GiB), one per combination.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows (bytes), one per combination.")
@handle_errors
def sweep(method, ranks, batch_sizes, seq_lens, gpu, as_csv, as_json, **opts):
    """A grid of peaks over ranks x batch sizes x sequence lengths, for scripts and plots.

    \b
    Example:
      memplan sweep --model llama-1b --method galore --ranks 64,128,256,512 --batch-sizes 1,4,16
      memplan sweep --model llama-1b --method golore --seq-lens 512,1024,2048,4096 --csv > peaks.csv
    """
    from memplan.cli.planner_tables import sweep_csv, sweep_table
    from memplan.planner import sweep as run

    if as_csv and as_json:
        raise MemplanError("Give --csv or --json, not both.")
    rows = run(opts["model"], method, ranks=_ints(ranks, "--ranks", limits.RANK),
               batch_sizes=_ints(batch_sizes, "--batch-sizes", limits.BATCH),
               seq_lens=_ints(seq_lens, "--seq-lens", limits.SEQ), gpu=gpu, gpu_file=opts["gpu_file"], **config_kwargs(opts))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif as_csv:
        click.echo(sweep_csv(rows))
    else:
        from memplan.planner import resolve_gpu

        click.echo(sweep_table(rows, resolve_gpu(gpu, opts["gpu_file"]) if gpu else None))


@click.command(context_settings=CONTEXT_SETTINGS)
@model_options
@click.option("--method", default="adamw", show_default=True, help="Training method (see 'memplan methods').")
@memory_options
@click.option("--gpus", default=None, help="Comma-separated GPU ids to consider (default: every profile).")
@click.option("--gpu-counts", default="1,2,4,8", show_default=True, help="Comma-separated GPU counts.")
@click.option("--layouts", default=None, help="Comma-separated layouts to allow: single,ddp,zero1,fsdp2-no-reshard,"
                                               "fsdp2 (aliases: zero2, zero3, fsdp). Default: all.")
@click.option("--sort", type=click.Choice(["hour", "purchase"]), default="hour", show_default=True,
              help="Rank by price per hour or by purchase price.")
@click.option("--top", type=int, default=None, help="Show only the N cheapest.")
@click.option("--min-headroom", type=float, default=0.0, show_default=True,
              help="GiB each GPU must keep free (a safety margin on top of the estimate).")
@host_ram_option
@_run_opts
@handle_errors
def plan(method, gpus, gpu_counts, layouts, sort, top, min_headroom, as_json, **opts):
    """What to rent or buy: every GPU and GPU count (1, 2, 4, 8) that fits, cheapest first.

    For each GPU profile and count, the least-sharded parallel layout that fits:
    single GPU, DDP, ZeRO-1/2/3 (FSDP). --batch-size is the micro-batch per GPU.
    Prices come from the GPU profiles (dated; override with --gpu-file).

    Exit codes: 0 when something fits, 3 when nothing fits ("Nothing fits"), 2 for bad input.

    \b
    Example:
      memplan plan --model llama-13b --method galore8bit --batch-size 4 --seq-len 2048
      memplan plan --model llama-7b --method adamw --checkpointing --sort purchase --top 5
      memplan plan --model llama-7b --method galore8bit --layerwise --min-headroom 2
      memplan plan --model llama-7b --method adamw --offload optimizer --host-ram 64
    """
    from memplan.cli.planner_tables import plan_table
    from memplan.estimator import estimate_config
    from memplan.planner import make_config
    from memplan.planner import plan as run

    kw = config_kwargs(opts)
    headroom = limits.check_float(min_headroom, limits.HEADROOM_GIB, "--min-headroom (GiB)")
    if top is not None and top < 1:
        raise MemplanError(f"--top must be 1 or more, got {top}: it keeps the N cheapest rows.")
    host_ram = host_ram_bytes(opts)
    rows = run(opts["model"], method, gpus=_names(gpus, "--gpus"),
               gpu_counts=_ints(gpu_counts, "--gpu-counts", limits.GPU_COUNT),
               layouts=_names(layouts, "--layouts"), gpu_file=opts["gpu_file"], sort=sort,
               min_headroom=int(headroom * GiB), host_ram=host_ram, **kw)
    if top is not None:
        rows = rows[:top]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        if not rows:
            raise SystemExit(NOTHING_FITS)
        return
    config = make_config(opts["model"], method, **kw)
    host = rows[0].host_bytes if rows else estimate_config(config).host_bytes  # (the same on every row)
    if not rows and host_ram is not None and host > host_ram:
        click.echo(f"Nothing fits: the offloaded optimizer (--offload {config.offload}) needs {host / GiB:.2f} GiB of "
                   f"host memory, more than --host-ram {host_ram / GiB:.2f} GiB. Use a larger --host-ram, "
                   + ("--offload optimizer (the gradients stay on the GPU), " if config.offload != "optimizer" else "")
                   + "or --offload none.")
        raise SystemExit(NOTHING_FITS)
    if not rows:
        hints = [h for h, on in (("--checkpointing", config.checkpointing),) if not on]
        click.echo(f"Nothing fits: {config.model.name} {config.method}, batch {config.batch_size} per GPU x seq "
                   f"{config.seq_len}, on any GPU profile and count considered. Try "
                   + ", ".join(hints + ["a smaller --batch-size or --seq-len", "--gpu-counts 16"]) + ".")
        raise SystemExit(NOTHING_FITS)
    click.echo(plan_table(rows, config, int(headroom * GiB), host_ram))


COMMANDS = [fit, compare, sweep, plan]
