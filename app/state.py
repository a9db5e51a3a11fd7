"""The sidebar shared by every page: model, method, rank, precision, batch, sequence, GPU.

`sidebar()` draws the inputs (in the entrypoint, before the page runs) and keeps
the chosen run in `st.session_state`; a page reads it with `inputs()`. Widget keys
are stable, so a choice survives switching pages. URL query parameters
(`?model=llama-1b&method=golore&rank=256&gpu=a100-80gb`) set the first values, so a
link opens the dashboard on one run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import streamlit as st

import memplan
from memplan import METHODS, MemplanError, ModelProfile, limits
from memplan.profiles import load_gpus, model_from_config, model_names
from memplan.units import GiB

UPLOAD = "Upload a config.json…"
PRECISIONS = {"bf16": "bf16 (pure)", "mixed": "mixed (fp32 master)", "fp32": "fp32"}
DEFAULTS = {"model": "llama-7b", "method": "galore8bit", "rank": 128, "precision": "bf16", "batch_size": 1,
            "seq_len": 2048, "layerwise": True, "checkpointing": True, "gpu": "rtx-4090"}
_INT_KEYS = ("rank", "batch_size", "seq_len")
_BOOL_KEYS = ("layerwise", "checkpointing")


@dataclass(frozen=True)
class Inputs:
    """One training run, as the sidebar sets it."""

    model: ModelProfile | None  # None: no valid model yet (an upload is awaited or failed)
    method: str
    rank: int
    precision: str
    batch_size: int
    seq_len: int
    layerwise: bool
    checkpointing: bool
    gpu: str  # GPU profile id
    model_error: str | None = None
    impl: str | None = None  # the implementation of `method` (memplan.impls); None: the method's default
    weights: str | None = None  # block linears: bf16 | int8 | nf4 (None: the method's default)
    offload: str = "none"  # none | optimizer | optimizer+gradients (torchao CPUOffloadOptimizer)
    loss: str = "standard"  # standard | fused-chunked (Liger's fused linear cross-entropy)
    attn: str = "sdpa"  # attention implementation: sdpa | eager
    attn_dropout: float | None = None  # None: the model config's
    hidden_dropout: float | None = None  # None: the model config's
    lora_dropout: float = 0.0

    def options(self, **changes) -> dict:
        """Keyword arguments for `memplan.estimate` (TrainingConfig fields) of the chosen method."""
        opts = dict(rank=self.rank, precision=self.precision, batch_size=self.batch_size, seq_len=self.seq_len,
                    layerwise=self.layerwise, checkpointing=self.checkpointing, attn=self.attn,
                    attn_dropout=self.attn_dropout, hidden_dropout=self.hidden_dropout,
                    lora_dropout=self.lora_dropout)
        if self.impl is not None:
            opts["impl"] = self.impl
        if self.weights is not None:
            opts["weights"] = self.weights
        if self.offload != "none":
            opts["offload"] = self.offload
        if self.loss != "standard":
            opts["loss"] = self.loss
        opts.update(changes)
        return opts

    @property
    def gpu_profile(self):
        return load_gpus()[self.gpu]

    @property
    def uses_rank(self) -> bool:
        return METHODS[self.method].uses_rank


def gpu_label(gid: str) -> str:
    g = load_gpus()[gid]
    return f"{g.name.replace('NVIDIA ', '').replace('GeForce ', '')} · {g.memory_mib / 1024:.0f} GB"


def _seed_from_query() -> None:
    """First run of a session: defaults, overridden by valid URL query parameters."""
    if "_seeded" in st.session_state:
        return
    st.session_state["_seeded"] = True
    values = dict(DEFAULTS)
    q = st.query_params
    for key in DEFAULTS:
        if key not in q:
            continue
        raw = q[key]
        if key in _INT_KEYS:
            if raw.isdigit() and int(raw) > 0:
                values[key] = int(raw)
        elif key in _BOOL_KEYS:
            values[key] = raw.lower() in ("1", "true", "yes", "on")
        elif key == "model" and raw in model_names():
            values[key] = raw
        elif key == "method" and raw in METHODS:
            values[key] = raw
        elif key == "precision" and raw in PRECISIONS:
            values[key] = raw
        elif key == "gpu" and raw in load_gpus():
            values[key] = raw
    for key, val in values.items():
        st.session_state.setdefault(f"in_{key}", val)


@st.cache_data(show_spinner=False, max_entries=64)
def parse_config(data: bytes, filename: str) -> ModelProfile:
    """An uploaded Hugging Face config.json, parsed as JSON only: nothing in it is executed.

    Size, UTF-8, nesting, types and every size are checked (memplan/limits.py); the model's
    name, shown in every page's title, keeps only letters, digits and '._-'.
    """
    where = f"uploaded file '{safe_name(filename, 80)}'"
    cfg = limits.parse_json(data, where)
    name = filename[: -len(".json")] if filename.endswith(".json") else filename
    if name == "config" and isinstance(cfg, dict) and isinstance(cfg.get("_name_or_path"), str):
        name = cfg["_name_or_path"].rstrip("/").split("/")[-1] or name
    name = safe_name(name, 64)
    if name in ("config", ""):
        name = "uploaded config.json"
    return model_from_config(cfg, name, where)


def safe_name(text: str, limit: int) -> str:
    """`text` with only letters, digits and '._-' kept (others become '_'), at most `limit` characters."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(text))[:limit]


_MD_SPECIAL = re.compile(r"([\\`\[\]()<>!])")  # links, images, code and HTML need these


def md(text) -> str:
    """Untrusted text, safe inside markdown: no link, image, emphasis or autolink can form."""
    text = re.sub(r"(?i)(www)\.", "\\1\u200b.", str(text)).replace("://", ":\u200b//")
    return _MD_SPECIAL.sub(r"\\\1", text)


# the library's messages name CLI options; the dashboard names its own fields
_WEB_WORDS = {"--rank": "Rank r", "--batch-size": "Batch size", "--seq-len": "Sequence length",
              "--precision": "Precision", "--layerwise": "Per-layer weight update",
              "--checkpointing": "Activation checkpointing", "--gpu": "GPU"}


def web_text(message: str) -> str:
    """A library message in the dashboard's words (its fields, not CLI options), safe for markdown."""
    text = str(message).splitlines()[0] if str(message).strip() else "error"
    text = re.sub(r"Use (--[a-z-]+) N with N >= 1\.", lambda m: f"Set '{_WEB_WORDS.get(m.group(1), m.group(1))}' "
                  "to 1 or more.", text)
    text = re.sub(r"Use (--[a-z-]+) (between|[0-9]+)", lambda m: f"Set '{_WEB_WORDS.get(m.group(1), m.group(1))}' "
                  f"{'to a value ' if m.group(2) == 'between' else 'to '}{m.group(2) if m.group(2) != 'between' else 'between'}",
                  text)
    for flag, label in sorted(_WEB_WORDS.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", f"'{label}'", text)
    return md(text)


def _model_input() -> tuple[ModelProfile | None, str | None]:
    choice = st.selectbox("Model", [*model_names(), UPLOAD], key="in_model",
                          help="A built-in profile, or your own Hugging Face config.json (LLaMA, Mistral, "
                               "OPT, GPT-2, BERT/RoBERTa).")
    if choice != UPLOAD:
        return memplan.load_model(choice), None
    up = st.file_uploader("config.json", type=["json"], key="in_upload",
                          help="Read as JSON only; nothing in the file is executed.")
    if up is None:
        return None, "Upload a Hugging Face config.json in the sidebar to estimate your own model."
    try:
        return parse_config(up.getvalue(), up.name), None
    except MemplanError as e:
        return None, str(e)


def _impl_input(method: str) -> str:
    """The implementation selector: the code that runs the method (its default first)."""
    from memplan.impls import impls_of

    default = METHODS[method].default_impl
    names = [default] + [n for n in impls_of(method) if n != default]
    pick = st.selectbox("Implementation", names, key=f"in_impl_{method}",
                        format_func=lambda n: f"{n} (default)" if n == default else n,
                        help="The library that runs the method: its transients and state differ "
                             "(e.g. torch's foreach AdamW keeps one extra buffer the size of all parameters).")
    st.caption(impls_of(method)[pick].library)
    return pick


def _memory_inputs(method: str) -> tuple[str | None, str, str]:
    """Weight format, offload and loss: the options of a 16-24 GB GPU (QLoRA, Q-GaLore, offload, Liger)."""
    from memplan.offload import OFFLOADABLE

    m = METHODS[method]
    with st.expander("Weights, offload, loss", expanded=False):
        fmt = st.selectbox("Weights", list(m.weights), key=f"in_weights_{method}",
                           format_func=lambda f: f"{f} (default)" if f == m.weights[0] else f,
                           help="How the block linears are stored: bf16 (unquantized), int8 (Q-GaLore / Q-APOLLO: "
                                "groups of 256) or nf4 (QLoRA: bitsandbytes, double quantization).")
        can_offload = method in OFFLOADABLE
        offload = st.radio("Offload to the CPU", ["none", "optimizer", "optimizer+gradients"], key="in_offload",
                           disabled=not can_offload, horizontal=False,
                           help="torchao's CPUOffloadOptimizer: optimizer state (and gradients) in host memory, "
                                "stepped on the CPU. Methods: " + ", ".join(OFFLOADABLE) + ".")
        loss = st.radio("Loss", ["standard", "fused-chunked"], key="in_loss", horizontal=True,
                        help="fused-chunked: Liger's fused linear cross-entropy, the logits never materialized.")
    return (None if fmt == m.weights[0] else fmt), (offload if can_offload else "none"), loss


_KEPT = "_kept_inputs"  # a plain session key: it survives a run that failed, widget keys may not


def _restore_inputs() -> None:
    """Widget values dropped by an interrupted run come back from the last complete one."""
    for key, val in st.session_state.get(_KEPT, {}).items():
        if f"in_{key}" not in st.session_state:
            st.session_state[f"in_{key}"] = val


def sidebar() -> Inputs:
    """Draw the inputs in the sidebar and return the chosen run."""
    _seed_from_query()
    _restore_inputs()
    with st.sidebar:
        st.markdown("### Training run")
        model, model_error = _model_input()
        if model is not None:
            st.caption(f"{memplan.parameter_count(model) / 1e9:.2f} B parameters · {model.num_hidden_layers} "
                       f"layers · hidden {model.hidden_size}")
        method = st.selectbox("Method", list(METHODS), key="in_method",
                              help="\n\n".join(f"**{m.name}**: {m.description}" for m in METHODS.values()))
        st.caption(METHODS[method].description)
        impl = _impl_input(method)
        uses_rank = METHODS[method].uses_rank
        rank = st.number_input("Rank r", min_value=1, max_value=65536, step=32, key="in_rank",
                               disabled=not uses_rank,
                               help="Projection / adapter rank. Only projection and adapter methods use it.")
        precision = st.radio("Precision", list(PRECISIONS), format_func=PRECISIONS.get, key="in_precision",
                             horizontal=True,
                             help="bf16: weights, gradients and optimizer states in bf16. mixed: fp32 master "
                                  "weights, gradients and states with bf16 autocast. fp32: everything fp32.")
        c1, c2 = st.columns(2)
        batch = c1.number_input("Batch size", min_value=1, max_value=4096, step=1, key="in_batch_size",
                                help="Micro-batch size per GPU.")
        seq = c2.number_input("Sequence length", min_value=1, max_value=1 << 20, step=256, key="in_seq_len",
                              help="Tokens per sequence.")
        layerwise = st.toggle("Per-layer weight update", key="in_layerwise",
                              help="Update each weight during backward and free its gradient at once.")
        ckpt = st.toggle("Activation checkpointing", key="in_checkpointing",
                         help="Keep only each block's input; recompute the rest in backward.")
        weights, offload, loss = _memory_inputs(method)
        knobs = _model_knobs(model)
        st.markdown("### GPU")
        gpu = st.selectbox("GPU", list(load_gpus()), format_func=gpu_label, key="in_gpu",
                           label_visibility="collapsed")
        g = load_gpus()[gpu]
        usable = f"{g.usable_mib * (1 << 20) / GiB:.2f} GiB usable by CUDA" if g.usable_mib else \
            f"{g.memory_mib / 1024:.1f} GiB framebuffer"
        st.caption(f"{g.name}: {usable}" + (f" · ${g.price_per_hour_usd:.2f}/h" if g.price_per_hour_usd else ""))
    chosen = Inputs(model, method, int(rank), precision, int(batch), int(seq), bool(layerwise), bool(ckpt), gpu,
                    model_error, impl, weights, offload, loss, **knobs)
    st.session_state["_inputs"] = chosen
    st.session_state[_KEPT] = {k[3:]: v for k, v in st.session_state.items()  # every input but the upload
                               if k.startswith("in_") and k != "in_upload"}
    return chosen


def _model_knobs(model) -> dict:
    """Attention implementation and dropouts (empty dropout fields: the model config's values)."""
    with st.expander("Attention and dropout"):
        attn = st.radio("Attention", ["sdpa", "eager"], key="in_attn", horizontal=True,
                        help="transformers' attn_implementation. eager keeps the seq x seq probabilities "
                             "(fp32 softmax and its copy) for backward; sdpa (flash / memory-efficient) does not.")
        ad_default = f"{model.attention_dropout:g}" if model is not None else "config"
        hd_default = f"{model.hidden_dropout:g}" if model is not None else "config"
        ad = st.number_input("Attention dropout", min_value=0.0, max_value=0.99, value=None, step=0.05,
                             key="in_attn_dropout", placeholder=f"model config: {ad_default}")
        hd = st.number_input("Hidden dropout", min_value=0.0, max_value=0.99, value=None, step=0.05,
                             key="in_hidden_dropout", placeholder=f"model config: {hd_default}")
        ld = st.number_input("LoRA dropout", min_value=0.0, max_value=0.99, value=0.0, step=0.05,
                             key="in_lora_dropout", help="peft's lora_dropout (adapter methods).")
    return {"attn": attn, "attn_dropout": ad, "hidden_dropout": hd, "lora_dropout": float(ld or 0.0)}


def inputs() -> Inputs:
    """The run chosen in the sidebar; a page stops with a message while there is no valid model."""
    chosen = st.session_state.get("_inputs")
    if chosen is None:
        chosen = sidebar()
    if chosen.model is None:
        bad_upload = st.session_state.get("in_upload") is not None
        (st.error if bad_upload else st.info)(web_text(chosen.model_error or "Choose a model in the sidebar."))
        st.stop()
    return chosen


def shown(fn, *args, **kwargs):
    """Call the library; any error becomes a one-line message (never a traceback) and the page stops."""
    try:
        return fn(*args, **kwargs)
    except MemplanError as e:
        st.error(web_text(e))
    except Exception as e:  # noqa: BLE001 (a server never shows a traceback; the sidebar keeps its state)
        st.error(web_text(f"memplan could not compute this run ({type(e).__name__}: {e})."))
    st.stop()
