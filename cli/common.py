"""Shared CLI pieces: the estimate options, error handling, option -> library call."""
from __future__ import annotations

import functools

import click

from memplan.errors import MemplanError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class CLIError(click.ClickException):
    """Printed as one line, `Error: ...`, with exit code 2 (bad input)."""

    exit_code = 2


def handle_errors(f):
    """Library errors become `Error: ...` (exit code 2), never a traceback."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except MemplanError as e:
            raise CLIError(str(e)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None

    return wrapper


def model_options(f):
    """--model and the options that shape the run (shared by estimate, fit, compare, sweep, plan)."""
    opts = [
        click.option("--model", "-m", required=True,
                     help="Built-in profile (see 'memplan models') or path to a HF config.json / its folder."),
        click.option("--update-gap", type=int, default=200, show_default=True,
                     help="Projection refresh interval T (steps)."),
        click.option("--target-modules", default=None,
                     help="Comma-separated module names to project/adapt (default: attention + MLP linears)."),
        click.option("--precision", type=click.Choice(["bf16", "mixed", "fp32"]), default="bf16", show_default=True,
                     help="bf16: pure bf16 weights/grads/states; mixed: fp32 master + bf16 autocast; fp32."),
        click.option("--layerwise/--no-layerwise", default=False, show_default=True,
                     help="Per-layer weight update during backward (gradients freed at once)."),
        click.option("--checkpointing/--no-checkpointing", default=False, show_default=True,
                     help="Activation checkpointing per block."),
        click.option("--train-non-target/--freeze-non-target", default=None,
                     help="Adapter methods (lora, relora, lowrank): train embeddings, head and norms too."),
        click.option("--gpu-file", type=click.Path(dir_okay=False), default=None,
                     help="TOML or JSON file adding or overriding GPU profiles."),
        click.option("--attn", type=click.Choice(["sdpa", "eager"]), default="sdpa", show_default=True,
                     help="Attention implementation (transformers' attn_implementation): eager keeps the "
                          "seq x seq probabilities for backward."),
        click.option("--dropout", type=float, default=None,
                     help="Set the attention, hidden and LoRA dropout at once (0: none)."),
        click.option("--attn-dropout", type=float, default=None,
                     help="Dropout on the attention probabilities [default: the model config's]."),
        click.option("--hidden-dropout", type=float, default=None,
                     help="Dropout on the residual branches and embeddings [default: the model config's]."),
        click.option("--lora-dropout", type=float, default=None,
                     help="peft's lora_dropout on each adapted input (adapter methods) [default: 0]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def run_options(f):
    """--rank, --batch-size, --seq-len: one run's shape (estimate, fit, compare, plan)."""
    for opt in reversed([
        click.option("--rank", "-r", type=int, default=128, show_default=True,
                     help="Projection / adapter rank (projection and adapter methods)."),
        click.option("--batch-size", "-b", type=int, default=1, show_default=True, help="Micro-batch size per GPU."),
        click.option("--seq-len", "-s", type=int, default=2048, show_default=True, help="Sequence length (tokens)."),
    ]):
        f = opt(f)
    return f


def _beta1(ctx, param, value):
    if value is None or value.strip().lower() == "none":
        return None if value is None else "none"
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"expected a number in [0, 1) or 'none', got {value!r}") from None


def impl_options(f):
    """--impl, --momentum, --beta1: the code that runs the method and its memory-relevant options."""
    for opt in reversed([
        click.option("--impl", default=None,
                     help="Implementation that runs the method, e.g. torch-foreach, torch-fused, galore-torch, "
                          "peft, bundled (default: the method's default; see 'memplan methods')."),
        click.option("--momentum", type=float, default=None,
                     help="SGD momentum (0: no momentum buffer; default: torch's 0)."),
        click.option("--beta1", default=None, callback=_beta1,
                     help="Adafactor first-moment decay, or 'none' for no first moment "
                          "(default: transformers' None; bundled 0.9)."),
    ]):
        f = opt(f)
    return f


_OFFLOAD = click.option("--offload", type=click.Choice(["none", "optimizer", "optimizer+gradients"]), default="none",
                        show_default=True, help="Optimizer state (and gradients) in host memory, stepped on the CPU "
                                                "(torchao CPUOffloadOptimizer); the host figure is reported.")
_LOSS = click.option("--loss", type=click.Choice(["standard", "fused-chunked"]), default="standard",
                     show_default=True, help="fused-chunked: head + cross-entropy fused in chunks, no full logits "
                                             "(Liger's fused linear cross-entropy).")
_LOSS_CHUNK = click.option("--loss-chunk", type=int, default=None,
                           help="Tokens per chunk of --loss fused-chunked (default: Liger's for the shape).")
_WEIGHTS = click.option("--weights", type=click.Choice(["bf16", "int8", "nf4"]), default=None,
                        help="Block linears as bf16 (unquantized), int8 (Q-GaLore / Q-APOLLO: groups of 256) or "
                             "nf4 (QLoRA: bitsandbytes, double quantization). Default: the method's own.")
_HOST_RAM = click.option("--host-ram", type=float, default=None,
                         help="GiB of host RAM: also check that an --offload run's host memory fits.")


def _apply(f, opts):
    for opt in reversed(opts):
        f = opt(f)
    return f


def memory_options(f):
    """--weights, --offload, --loss, --loss-chunk: options of one method's run that change its memory."""
    return _apply(f, [_WEIGHTS, _OFFLOAD, _LOSS, _LOSS_CHUNK])


def shared_memory_options(f):
    """--offload, --loss, --loss-chunk for commands over several methods (each keeps its own weights)."""
    return _apply(f, [_OFFLOAD, _LOSS, _LOSS_CHUNK])


def host_ram_option(f):
    return _HOST_RAM(f)


def estimate_options(f):
    f = host_ram_option(f)
    f = memory_options(f)
    f = impl_options(f)
    f = click.option("--gpu", "-g", default=None,
                     help="GPU profile id for the fit verdict (see 'memplan gpus'), or 'local' / 'local:N' for "
                          "this machine's GPU (NVML).")(f)
    f = run_options(f)
    f = click.option("--method", default="adamw", show_default=True,
                     help="Training method (see 'memplan methods').")(f)
    return model_options(f)


CONFIG_KEYS = ("rank", "update_gap", "target_modules", "precision", "batch_size", "seq_len", "layerwise",
               "checkpointing", "train_non_target", "impl", "momentum", "beta1", "weights", "offload", "loss",
               "loss_chunk", "attn")
DROPOUT_KEYS = ("attn_dropout", "hidden_dropout", "lora_dropout")


def config_kwargs(opts: dict) -> dict:
    """The TrainingConfig fields among the parsed options (--dropout fills the dropouts not given)."""
    kw = {k: opts[k] for k in CONFIG_KEYS if k in opts}
    for k in DROPOUT_KEYS:
        val = opts.get(k) if opts.get(k) is not None else opts.get("dropout")
        if val is not None:
            kw[k] = val
    return kw


def host_ram_bytes(opts: dict) -> int | None:
    """--host-ram in bytes (None: not given)."""
    from memplan.units import GiB

    v = opts.get("host_ram")
    if v is None:
        return None
    from memplan import limits

    return int(limits.check_float(v, limits.HOST_RAM_GIB, "--host-ram (GiB)", low_open=True) * GiB)


def run_estimate(opts: dict):
    from memplan.estimator import estimate

    return estimate(opts["model"], opts["method"], gpu=opts.get("gpu"), gpu_file=opts.get("gpu_file"),
                    **config_kwargs(opts))
