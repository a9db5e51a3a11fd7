"""`memplan validate`: measure real (or fake) training steps against the estimate."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from memplan.categories import PHASES, TENSOR_CATEGORIES as CATS
from memplan.cli.common import CONTEXT_SETTINGS, CLIError, impl_options
from memplan.cli.distributed import layout_options


def _mib(n) -> str:
    return f"{n / 2**20:,.1f}"


def _pct(x) -> str:
    return f"{100 * x:+.2f}%"


def point_table(v: dict) -> str:
    from tabulate import tabulate
    e, m, err = v["estimate"], v["measured"], v["error"]
    rows = [[c, _mib(e["categories"][c]), _mib(m["categories"][c]), f"{err['categories'][c]['bytes']:+,d}",
             _pct(err["categories"][c]["relative"])] for c in CATS]
    rows.append(["peak (" + e["peak_phase"] + " / " + m["peak_phase"] + ")", _mib(e["peak_bytes"]),
                 _mib(m["peak_bytes"]), f"{err['peak']['bytes']:+,d}", _pct(err["peak"]["relative"])])
    out = [tabulate(rows, headers=["category", "estimate MiB", "measured MiB", "error bytes", "error"],
                    disable_numparse=True, colalign=("left", "right", "right", "right", "right"))]
    prow = [[p, _mib(e["phases"][p]["total"]), _mib(m["phases"][p]["total"]), _pct(err["phases"][p])]
            for p in PHASES]
    out.append(tabulate(prow, headers=["phase", "estimate MiB", "measured MiB", "error"], disable_numparse=True,
                        colalign=("left", "right", "right", "right")))
    if "cuda" in m:
        c = m["cuda"]
        out.append(f"CUDA: max allocated {_mib(c['max_allocated'])} MiB, max reserved {_mib(c['max_reserved'])} MiB"
                   + (f", NVML used {_mib(c['nvml_used'])} MiB" if "nvml_used" in c else "")
                   + f"; estimated device total {_mib(e['device_total_bytes'])} MiB")
    if "reserved" in m:
        r = m["reserved"]
        line = (f"CUDA caching-allocator model ({r['allocations']:,} allocations replayed in {r['seconds']:.1f} s): "
                f"predicted max_memory_reserved {_mib(r['max_reserved'])} MiB, max_memory_allocated "
                f"{_mib(r['max_allocated'])} MiB (allocated peak measured {_mib(m['peak_bytes'])} MiB); "
                f"{r['segments']} segments; on CUDA add the cuBLAS workspaces (2 x 32 MiB on Hopper)")
        if "cuda" in m:
            line += f"; real max reserved {_mib(m['cuda']['max_reserved'])} MiB"
        out.append(line)
    verdict = "PASS" if v["passed"] else "FAIL: " + "; ".join(v["failures"])
    out.append(f"{verdict}  ({v['seconds']:.1f} s)")
    return "\n\n".join(out)


def summary_table(rows) -> str:
    """Worst / median errors per group: (method, implementation) rows, or family rows."""
    from tabulate import tabulate

    def fmt(pair, rel):
        if pair is None or pair[0] is None:
            return "-"
        return f"{100 * pair[0]:.2f}% / {100 * pair[1]:.2f}%" if rel else f"{pair[0]:,} / {pair[1]:,}"
    by_family = bool(rows) and "family" in rows[0]
    table = []
    for r in rows:
        head = [r["family"]] if by_family else [r["method"], r.get("impl", "")]
        table.append(head + [f"{r['passed']}/{r['points']}", fmt(r["parameters"], False),
                             fmt(r["gradients"], False), fmt(r["optimizer_states"], False),
                             fmt(r["projectors"], False), fmt(r.get("activations"), True),
                             fmt(r.get("transients", r.get("temporaries")), True), fmt(r["peak"], True),
                             f"{r['phase_match']}/{r['points']}"])
    heads = (["family"] if by_family else ["method", "impl"]) + [
        "passed", "params B", "grads B", "states B", "proj B", "activations (%peak)", "transients (%peak)", "peak",
        "peak phase"]
    return tabulate(table, headers=heads, disable_numparse=True)


@click.command("validate", context_settings=CONTEXT_SETTINGS)
@click.option("--model", "-m", default="llama-60m", show_default=True, help="Built-in model profile.")
@click.option("--method", default="galore", show_default=True, help="Training method (see 'memplan methods').")
@click.option("--rank", type=int, default=128, show_default=True, help="Projection / adapter rank.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--seq-len", type=int, default=256, show_default=True)
@click.option("--precision", type=click.Choice(["bf16", "mixed", "fp32"]), default="bf16", show_default=True)
@click.option("--layerwise/--no-layerwise", default=False, show_default=True, help="Per-layer weight update.")
@click.option("--checkpointing/--no-checkpointing", default=False, show_default=True,
              help="Activation checkpointing per block.")
@click.option("--device", type=click.Choice(["cpu", "fake", "cuda"]), default="cpu", show_default=True,
              help="cpu: real tensors; fake: FakeTensorMode (no memory allocated); cuda: the GPU.")
@click.option("--hf/--bundled", "hf", default=None,
              help="Measure the model family's Hugging Face class (LlamaForCausalLM, MistralForCausalLM, "
                   "GPT2LMHeadModel, OPTForCausalLM, RobertaForMaskedLM, BertForMaskedLM; random weights, no "
                   "download) or memplan's bundled LLaMA. [default: --hf where transformers is installed]")
@click.option("--attn", type=click.Choice(["sdpa", "eager"]), default="sdpa", show_default=True,
              help="Attention implementation of the Hugging Face class.")
@click.option("--dropout", type=float, default=None, help="Set the attention, hidden and LoRA dropout at once.")
@click.option("--attn-dropout", type=float, default=None, help="[default: the model config's]")
@click.option("--hidden-dropout", type=float, default=None, help="[default: the model config's]")
@click.option("--lora-dropout", type=float, default=None, help="[default: 0]")
@click.option("--snapshot", type=click.Path(dir_okay=False), default=None,
              help="With --device cuda: write a CUDA memory snapshot (open it in pytorch.org/memory_viz).")
@layout_options
@click.option("--grid", type=click.Choice(["small", "full", "impls", "families", "dist"]), default=None,
              help="Run a validation grid instead of one point and write a JSON report.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Report path for --grid (default benchmarks/results/validate_<grid>.json).")
@click.option("--reserved", is_flag=True,
              help="Also predict max_memory_reserved: replay the steps' allocations through memplan's model of "
                   "PyTorch's CUDA caching allocator.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {estimate, measured, error} (bytes).")
@impl_options
def validate(model, method, rank, batch_size, seq_len, precision, layerwise, checkpointing, device, hf, attn,
             dropout, attn_dropout, hidden_dropout, lora_dropout, snapshot, layout, num_gpus, bucket_view, grid,
             out, reserved, as_json, impl, momentum, beta1):
    """Measure training steps of the model and compare with the estimate.

    Builds the Hugging Face class of the model's family (or, with --bundled,
    memplan's LLaMA) and runs three steps (a warm-up, an ordinary step and a
    projection refresh) with the bundled optimizer, or with the real library given
    by --impl (torch-foreach, torch-fused, torch-forloop, torch (SGD), transformers,
    bitsandbytes, galore-torch, peft, apollo-torch, fira, q-galore-torch-bf16; a method
    without a bundled optimizer runs its library), measures memory by category and phase,
    and prints estimate, measurement and error side by side. Exit code 1 when a target
    fails (exact parameters, gradients, optimizer states and projectors; peak
    within 3% and in the same phase).

    \b
    Example:
      memplan validate --model llama-60m --method galore --rank 128 --batch-size 4 --seq-len 256
      memplan validate --model gpt2 --method adamw --attn eager --batch-size 4 --seq-len 1024 --device fake
      memplan validate --model llama-7b --method galore8bit --rank 1024 --layerwise --device fake
      memplan validate --model llama-7b --method galore8bit --layerwise --device fake --reserved
      memplan validate --model llama-1b --method adamw --impl torch-foreach --device fake --seq-len 512
      memplan validate --grid small
      memplan validate --model llama-60m --method adamw --layout zero1 --num-gpus 4 --device cpu
      memplan validate --model llama-7b --method adamw --layout fsdp2 --num-gpus 8 --device fake
      memplan validate --grid dist

    With --layout / --num-gpus, --device cpu spawns one gloo process per rank on this
    machine and --device fake simulates the ranks in one process (FSDP2 only); the
    estimate is the worst rank's, compared with the measured rank of highest peak.
    """
    try:
        from memplan.measure.validate import ValidateConfig
    except ImportError as e:
        raise CLIError(f"memplan validate needs torch: pip install 'memplan[torch]' ({e})") from None
    if grid == "dist":
        from memplan.cli.distributed import run_grid
        return run_grid(out, as_json)
    if grid:
        return _run_grid(grid, out, as_json)
    if layout is not None or num_gpus is not None:
        from memplan.cli.distributed import validate_point
        return validate_point(model, method, rank, batch_size, seq_len, precision, checkpointing, device, layout,
                              num_gpus, bucket_view, as_json)
    try:
        pick = lambda v: v if v is not None else dropout  # noqa: E731
        cfgs = [ValidateConfig(model=model, method=method, rank=rank, precision=precision, batch_size=batch_size,
                               seq_len=seq_len, layerwise=layerwise, checkpointing=checkpointing, device=device,
                               impl=impl, momentum=momentum, beta1=beta1,
                               implementation={None: "auto", True: "hf", False: "bundled"}[hf], attn=attn,
                               attn_dropout=pick(attn_dropout), hidden_dropout=pick(hidden_dropout),
                               lora_dropout=pick(lora_dropout) or 0.0)]
        results = [_run_one(c, snapshot if i == 0 else None, quiet=as_json, reserved=reserved)
                   for i, c in enumerate(cfgs)]
    except CLIError:
        raise
    except Exception as e:  # library errors: one line, no traceback
        raise CLIError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if as_json:
        click.echo(json.dumps(results[0], indent=2))
    else:
        from memplan.models.hf import hf_class_name
        from memplan.profiles import load_model
        for c, r in zip(cfgs, results):
            what = hf_class_name(load_model(c.model)) if c.implementation == "hf" else "bundled LLaMA"
            click.echo(f"\n{c.model} {c.method} (optimizer {c.resolved_impl}, {what}, {c.attn} attention, "
                       f"{c.device}, {c.precision}, "
                       f"batch {c.batch_size} x {c.seq_len}, layerwise {c.layerwise}, "
                       f"checkpointing {c.checkpointing})\n")
            click.echo(point_table(r))
    if not all(r["passed"] for r in results):
        raise SystemExit(1)


def _cpu_lacks_bf16() -> bool:
    """True when this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX): torch then
    multiplies bf16 matrices some 30x slower than fp32 (measured on an AVX2 machine)."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability().upper()
    return "BF16" not in cap and "AMX" not in cap


def _run_one(cfg, snapshot, quiet, reserved=False):
    from tqdm import tqdm

    import memplan
    from memplan.measure.validate import validate as run
    # bad arguments are one line before anything is drawn or built
    memplan.estimate(cfg.model, cfg.method, **cfg.estimator_options())
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda needs a CUDA GPU; none is visible. Use --device cpu or --device fake.")
    if cfg.device == "cpu" and cfg.precision in ("bf16", "mixed") and not quiet and _cpu_lacks_bf16():
        click.echo("Note: this CPU has no bf16 matrix instructions, so real bf16 steps take minutes here. "
                   "--device fake measures the same bytes in seconds; --precision fp32 runs real steps fast.",
                   err=True)
    if cfg.device == "cpu" and cfg.resolved_impl == "bitsandbytes" and not quiet:
        click.echo("Note: on CPU tensors bitsandbytes runs its CPU kernel (fp32 copies of both moments, the "
                   "gradient and the weight); the estimate models its CUDA kernel, which updates in place. "
                   "--device fake measures the CUDA kernel's memory (its fake op allocates nothing).", err=True)
    if cfg.device == "fake" and cfg.resolved_impl == "galore-torch" and cfg.method == "galore8bit":
        raise CLIError("galore-torch's 8-bit optimizer does not run under fake tensors (bitsandbytes' 32-bit "
                       "update reads a tensor norm as a Python float); use --device cpu.")
    with tqdm(total=3, desc=f"{cfg.model} {cfg.method} steps", disable=quiet, leave=False) as bar:
        return run(cfg, progress=bar.update, snapshot=snapshot, reserved=reserved).to_dict()


def _run_grid(name, out, as_json):
    from tqdm import tqdm

    from memplan.measure.grid import grid, run_grid, summarize
    configs = grid(name)
    t0 = time.perf_counter()
    with tqdm(total=len(configs), desc=f"grid {name}", disable=as_json) as bar:
        def show(r):
            c = r["config"]
            bar.set_postfix_str(f"{c['model']} {c['method']} {'PASS' if r['passed'] else 'FAIL'}")
        results = run_grid(configs, progress=bar.update, on_result=show)
    wall = time.perf_counter() - t0
    summary, families = summarize(results), summarize(results, by="family")
    listed = lambda rows: [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in rows]  # noqa: E731
    report = {"grid": name, "wall_seconds": round(wall, 1), "points": results,
              "summary": listed(summary), "summary_families": listed(families),
              "passed": sum(r["passed"] for r in results), "total": len(results)}
    path = Path(out or f"benchmarks/results/validate_{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    if as_json:
        click.echo(json.dumps(report["summary"], indent=2))
    else:
        click.echo(summary_table(summary))
        click.echo("\n" + summary_table(families))
        click.echo(f"\n{report['passed']}/{report['total']} points pass; worst / median per column "
                   f"(exact columns in bytes). Wall time {wall:.0f} s. Report: {path}")
        for r in results:
            if not r["passed"]:
                c = r["config"]
                click.echo(f"FAIL {c['model']} {c['device']} {c['method']} {c.get('impl') or ''} "
                           f"layerwise={c['layerwise']} "
                           f"checkpointing={c['checkpointing']}: {'; '.join(r['failures'])}")
    if report["passed"] != report["total"]:
        raise SystemExit(1)


COMMANDS = [validate]
