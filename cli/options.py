"""The estimate options as data: one table that click's decorators (cli/common.py) and the
start-up fast path (cli/fast.py) both read, so the two cannot disagree. No click here.
"""
from __future__ import annotations


class Opt:
    """One option as click declares it: its flags ('--a/--no-a' for a boolean pair), and
    click.option's keywords. `choices` is a click.Choice, `path` a click.Path(dir_okay=False)."""

    __slots__ = ("decls", "type", "default", "help", "choices", "required", "show_default", "flag", "callback",
                 "path", "name")

    def __init__(self, *decls, type=str, default=None, help="", choices=None, required=False, show_default=False,
                 flag=False, callback=None, path=False):
        self.decls, self.type, self.default, self.help = decls, type, default, help
        self.choices, self.required, self.show_default, self.flag = choices, required, show_default, flag
        self.callback, self.path = callback, path
        names = [d for d in decls if not d.startswith("-")]
        first_long = next(d for d in decls if d.startswith("--")).split("/")[0]
        self.name = names[0] if names else first_long[2:].replace("-", "_")

    @property
    def boolean_pair(self) -> bool:
        return any("/" in d for d in self.decls)

    def switches(self) -> dict:
        """{flag as typed: value it sets, or None when it takes the next word}."""
        out = {}
        for d in self.decls:
            if not d.startswith("-"):
                continue
            if "/" in d:
                on, off = d.split("/")
                out[on], out[off] = True, False
            else:
                out[d] = True if self.flag else None
        return out


def parse_beta1(value):
    """--beta1: a number, or 'none' (no first moment). ValueError for anything else."""
    if value is None or value.strip().lower() == "none":
        return None if value is None else "none"
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"expected a number in [0, 1) or 'none', got {value!r}") from None


MODEL = [
    Opt("--model", "-m", required=True,
        help="Built-in profile (see 'memplan models') or path to a HF config.json / its folder."),
    Opt("--update-gap", type=int, default=200, show_default=True, help="Projection refresh interval T (steps)."),
    Opt("--target-modules", default=None,
        help="Comma-separated module names to project/adapt (default: attention + MLP linears)."),
    Opt("--precision", choices=("bf16", "mixed", "fp32"), default="bf16", show_default=True,
        help="bf16: pure bf16 weights/grads/states; mixed: fp32 master + bf16 autocast; fp32."),
    Opt("--layerwise/--no-layerwise", default=False, show_default=True,
        help="Per-layer weight update during backward (gradients freed at once)."),
    Opt("--checkpointing/--no-checkpointing", default=False, show_default=True,
        help="Activation checkpointing per block."),
    Opt("--train-non-target/--freeze-non-target", default=None,
        help="Adapter methods (lora, relora, lowrank): train embeddings, head and norms too."),
    Opt("--gpu-file", path=True, default=None, help="TOML or JSON file adding or overriding GPU profiles."),
    Opt("--attn", choices=("sdpa", "eager"), default="sdpa", show_default=True,
        help="Attention implementation (transformers' attn_implementation): eager keeps the "
             "seq x seq probabilities for backward."),
    Opt("--dropout", type=float, default=None, help="Set the attention, hidden and LoRA dropout at once (0: none)."),
    Opt("--attn-dropout", type=float, default=None,
        help="Dropout on the attention probabilities [default: the model config's]."),
    Opt("--hidden-dropout", type=float, default=None,
        help="Dropout on the residual branches and embeddings [default: the model config's]."),
    Opt("--lora-dropout", type=float, default=None,
        help="peft's lora_dropout on each adapted input (adapter methods) [default: 0]."),
]

RUN = [
    Opt("--rank", "-r", type=int, default=128, show_default=True,
        help="Projection / adapter rank (projection and adapter methods)."),
    Opt("--batch-size", "-b", type=int, default=1, show_default=True, help="Micro-batch size per GPU."),
    Opt("--seq-len", "-s", type=int, default=2048, show_default=True, help="Sequence length (tokens)."),
]

IMPL = [
    Opt("--impl", default=None,
        help="Implementation that runs the method, e.g. torch-foreach, torch-fused, galore-torch, "
             "peft, bundled (default: the method's default; see 'memplan methods')."),
    Opt("--momentum", type=float, default=None, help="SGD momentum (0: no momentum buffer; default: torch's 0)."),
    Opt("--beta1", default=None, callback=parse_beta1,
        help="Adafactor first-moment decay, or 'none' for no first moment "
             "(default: transformers' None; bundled 0.9)."),
]

OFFLOAD = Opt("--offload", choices=("none", "optimizer", "optimizer+gradients"), default="none", show_default=True,
              help="Optimizer state (and gradients) in host memory, stepped on the CPU "
                   "(torchao CPUOffloadOptimizer); the host figure is reported.")
LOSS = Opt("--loss", choices=("standard", "fused-chunked"), default="standard", show_default=True,
           help="fused-chunked: head + cross-entropy fused in chunks, no full logits "
                "(Liger's fused linear cross-entropy).")
LOSS_CHUNK = Opt("--loss-chunk", type=int, default=None,
                 help="Tokens per chunk of --loss fused-chunked (default: Liger's for the shape).")
WEIGHTS = Opt("--weights", choices=("bf16", "int8", "nf4"), default=None,
              help="Block linears as bf16 (unquantized), int8 (Q-GaLore / Q-APOLLO: groups of 256) or "
                   "nf4 (QLoRA: bitsandbytes, double quantization). Default: the method's own.")
HOST_RAM = Opt("--host-ram", type=float, default=None,
               help="GiB of host RAM: also check that an --offload run's host memory fits.")
MEMORY = [WEIGHTS, OFFLOAD, LOSS, LOSS_CHUNK]
SHARED_MEMORY = [OFFLOAD, LOSS, LOSS_CHUNK]

METHOD = Opt("--method", default="adamw", show_default=True, help="Training method (see 'memplan methods').")
GPU = Opt("--gpu", "-g", default=None,
          help="GPU profile id for the fit verdict (see 'memplan gpus'), or 'local' / 'local:N' for "
               "this machine's GPU (NVML).")
# estimate's options in click's order: a decorator list is applied bottom-up, so the first is outermost
ESTIMATE = MODEL + [METHOD] + RUN + [GPU] + IMPL + MEMORY + [HOST_RAM]

LAYOUT = [
    Opt("--layout", default=None,
        help="Multi-GPU layout, named after PyTorch's engine: ddp, zero1 (DDP + ZeroRedundancyOptimizer), "
             "fsdp2 (reshard after forward), fsdp2-no-reshard. Numbers are per GPU, worst rank."),
    Opt("--num-gpus", type=int, default=None, help="Number of GPUs (ranks) for --layout."),
    Opt("--bucket-view", flag=True, default=False, help="DDP's gradient_as_bucket_view=True (ddp, zero1)."),
]
JSON = Opt("--json", "as_json", flag=True, default=False, help="Print the estimate as JSON (bytes).")


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
