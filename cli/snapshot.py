"""`memplan snapshot`: what a real CUDA memory snapshot holds, replayed through the allocator model."""
from __future__ import annotations

import json

import click

from memplan.cli.common import CONTEXT_SETTINGS, handle_errors

ROWS = ("parameters", "gradients", "optimizer_states", "projectors", "activations", "temporaries", "other")


def _gib(n) -> str:
    return f"{n / 2**30:,.2f}"


def _mib(n) -> str:
    return f"{n / 2**20:,.1f}"


def replay_json(snap, r) -> dict:
    """The --replay --json body: the snapshot's totals beside the model's."""
    return {"snapshot": {"reserved_bytes": snap.reserved_bytes, "allocated_bytes": snap.allocated_bytes,
                         "peak_reserved_bytes": r.real_peak_reserved_bytes},
            "replay": {"reserved_bytes": r.reserved_bytes, "peak_reserved_bytes": r.peak_reserved_bytes,
                       "allocations": r.allocations, "addresses_matched": r.addresses_matched,
                       "segments": r.segments, "segments_matched": r.segments_matched}}


def report_text(path, a: dict, r=None, est=None) -> str:
    from tabulate import tabulate
    s = a["settings"]
    conf = "not recorded (torch < 2.1: defaults)" if s is None else (s.get("PYTORCH_CUDA_ALLOC_CONF") or "defaults")
    out = [f"{path} | device {a['device']} | {a['segments']} segments | {a['trace_events']:,} trace events | "
           f"PYTORCH_CUDA_ALLOC_CONF: {conf}"]
    out.append(tabulate([["peak", _gib(a["peak_allocated_bytes"]), _gib(a["peak_reserved_bytes"])],
                         ["at the dump", _gib(a["allocated_bytes"]), _gib(a["reserved_bytes"])]],
                        headers=["GiB", "allocated", "reserved"], disable_numparse=True,
                        colalign=("left", "right", "right")))
    f = a["fragmentation"]
    out.append(f"Fragmentation at the dump (reserved - allocated): {_gib(f['bytes'])} GiB; "
               f"{_gib(f['in_used_segments'])} GiB free inside segments that hold live blocks, "
               f"{_gib(f['in_free_segments'])} GiB in whole free segments (empty_cache returns those); "
               f"small pool {_mib(f['small_pool'])} MiB, large pool {_gib(f['large_pool'])} GiB")
    if f["largest_free_segments"]:
        out.append(tabulate([[hex(x["address"]), _mib(x["segment_size"]), _mib(x["free_bytes"]), x["free_blocks"]]
                             for x in f["largest_free_segments"]],
                            headers=["segment", "size MiB", "free MiB", "free blocks"], disable_numparse=True,
                            colalign=("left", "right", "right", "right")))
    if a["largest_blocks"]:
        out.append("Largest live blocks:\n" + tabulate(
            [[hex(b["address"]), _mib(b["size"]), b["category"], b["where"] or "-"] for b in a["largest_blocks"]],
            headers=["address", "MiB", "category", "allocated at"], disable_numparse=True,
            colalign=("left", "right", "left", "left")))
    rows, headers = [], ["GiB", "at peak", "at the dump"]
    phase = None
    if est is not None:
        phase = est.peak_phase
        headers.append(f"estimate ({phase})")
    for c in ROWS:
        if c == "projectors" and est is None:
            continue
        row = [c, _gib(a["categories_at_peak"].get(c, 0)) if c != "projectors" else "-",
               _gib(a["categories_final"].get(c, 0)) if c != "projectors" else "-"]
        if est is not None:
            row.append(_gib(est.phases[phase].get(c, 0)) if c != "other" else "-")
        rows.append(row)
    total = ["allocated", _gib(sum(a["categories_at_peak"].values())), _gib(sum(a["categories_final"].values()))]
    if est is not None:
        total.append(_gib(est.peak_bytes))
    rows.append(total)
    reserved = ["reserved", _gib(a["peak_reserved_bytes"]), _gib(a["reserved_bytes"])]
    if est is not None:
        reserved.append(_gib(est.reserved_bytes))
    rows.append(reserved)
    if est is not None:
        rows.append(["device total", "-", "-", _gib(est.device_total_bytes)])
    out.append("Allocated by category (from each block's recorded stack; 'other': no stack says):\n"
               + tabulate(rows, headers=headers, disable_numparse=True,
                          colalign=("left",) + ("right",) * (len(headers) - 1)))
    if r is not None:
        out.append(f"Replay through memplan's allocator model ({r.seconds:.2f} s): addresses "
                   f"{r.addresses_matched:,}/{r.allocations:,} matched, segment layouts "
                   f"{r.segments_matched}/{r.segments} matched; reserved {_gib(r.reserved_bytes)} GiB "
                   f"(real {_gib(r.real_reserved_bytes)}), peak reserved {_gib(r.peak_reserved_bytes)} GiB "
                   f"(real {_gib(r.real_peak_reserved_bytes)}); {r.empty_cache_calls} empty_cache calls found")
    return "\n\n".join(out)


@click.command("snapshot", context_settings=CONTEXT_SETTINGS)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--replay", is_flag=True, help="Replay the trace through memplan's CUDA caching-allocator model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (bytes).")
@click.option("--model", "-m", default=None, help="Estimate this run beside the snapshot (profile or config.json).")
@click.option("--method", default="adamw", show_default=True, help="Training method of the estimate.")
@click.option("--rank", "-r", type=int, default=128, show_default=True, help="Rank of the estimate.")
@click.option("--batch-size", "-b", type=int, default=1, show_default=True)
@click.option("--seq-len", "-s", type=int, default=2048, show_default=True)
@click.option("--precision", type=click.Choice(["bf16", "mixed", "fp32"]), default="bf16", show_default=True)
@click.option("--layerwise/--no-layerwise", default=False)
@click.option("--checkpointing/--no-checkpointing", default=False)
@click.option("--target-modules", default=None, help="Comma-separated target modules of the estimate.")
@click.option("--impl", default=None, help="Implementation of the method (see 'memplan methods').")
@handle_errors
def snapshot(path, replay, as_json, model, method, rank, batch_size, seq_len, precision, layerwise, checkpointing,
             target_modules, impl):
    """What a CUDA memory snapshot holds: peak and final allocated and reserved
    bytes, fragmentation and where it sits, the largest blocks, and the allocated
    bytes by memplan category. The file (from torch.cuda.memory._dump_snapshot,
    plain or gzip) is read with every pickle global refused; torch is not needed.

    \b
    Example:
      memplan snapshot my_run.pickle
      memplan snapshot my_run.pickle --replay --json
      memplan snapshot my_run.pickle --model llama-7b --method galore --rank 128 --batch-size 4
    """
    from memplan.replay import replay as run_replay
    from memplan.snapshot import load
    from memplan.snapshot_report import analyze

    snap = load(path)
    r = run_replay(snap) if replay else None
    if as_json and r is not None:
        click.echo(json.dumps(replay_json(snap, r), indent=2))
        return
    a = analyze(snap)
    est = None
    if model is not None:
        from memplan.estimator import estimate
        opts = dict(rank=rank, batch_size=batch_size, seq_len=seq_len, precision=precision, layerwise=layerwise,
                    checkpointing=checkpointing)
        if target_modules is not None:
            opts["target_modules"] = target_modules
        if impl is not None:
            opts["impl"] = impl
        est = estimate(model, method, **opts)
    if as_json:
        body = dict(a)
        if est is not None:
            body["estimate"] = est.to_dict()
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(report_text(path, a, r, est))


COMMANDS = [snapshot]
