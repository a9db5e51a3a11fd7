"""Model and GPU profiles: data files loaded into typed, frozen dataclasses.

Models are Hugging Face `config.json` files (the built-in ones live in
`profiles/models/*.json`, with an extra `_memplan` block for the name and a
description), so a user's own `config.json` goes through the same code. GPUs are
TOML tables in `profiles/gpus.toml`; a user file (TOML or JSON, same keys) adds or
overrides GPUs. Every malformed file raises `MemplanError` naming the file, the key
and what was expected.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from functools import lru_cache

from memplan import limits
from memplan.errors import MemplanError, unknown
from memplan.records import cached_hash
from memplan.units import MiB

# model_type -> architecture family. A family fixes the tensor inventory and the
# activation model; see memplan/inventory.py and memplan/activations.py.
FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "opt": "opt",
    "gpt2": "gpt2",
    "mixtral": "llama",  # LLaMA attention and norms; each block's MLP is a mixture of experts (memplan/moe.py)
    "qwen2": "llama",  # Qwen2 / Qwen2.5: LLaMA with biases on q, k and v (not o)
    "qwen3": "llama",  # Qwen3: LLaMA with an RMSNorm over each head of q and of k
}


@cached_hash
@dataclass(frozen=True)
class ModelProfile:
    """One model architecture, in Hugging Face `config.json` terms."""

    name: str
    family: str  # "llama" (LLaMA/Mistral/Qwen decoders, GQA), "bert" (BERT/RoBERTa encoders), "opt", "gpt2"
    model_type: str
    hidden_size: int
    intermediate_size: int  # MLP width (OPT: ffn_dim; GPT-2: n_inner or 4*n_embd)
    num_attention_heads: int
    num_key_value_heads: int  # == num_attention_heads without grouped-query attention
    num_hidden_layers: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    hidden_act: str
    attention_bias: bool = False  # biases on q, k, v, o
    qkv_bias: bool = False  # biases on q, k and v only (Qwen2: o_proj has none)
    qk_norm: bool = False  # an RMSNorm over each head's q and k, before RoPE (Qwen3)
    mlp_bias: bool = False  # biases on the MLP linears
    type_vocab_size: int = 0  # BERT-style token-type embeddings
    word_embed_proj_dim: int = 0  # OPT: embedding width when it differs from hidden_size
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    sliding_window: int = 0  # Mistral: attention window; 0: none. Longer sequences are refused (not modelled)
    num_local_experts: int = 0  # Mixtral MoE: experts per block (0: a dense MLP); see memplan/moe.py
    num_experts_per_tok: int = 0  # MoE top-k: experts each token is routed to
    explicit_head_dim: int = 0  # config.json's `head_dim` when it is not hidden / heads (Mistral-NeMo); 0: none
    attention_dropout: float = 0.0  # the config's dropout on the attention probabilities
    hidden_dropout: float = 0.0  # the config's dropout on the residual branches (and embeddings)
    description: str = ""
    source: str = "built-in"

    def __post_init__(self):
        # the same bounds as config.json reading, for profiles built in Python (docs/limits.md)
        L = limits
        for key, bound in (("hidden_size", L.HIDDEN), ("intermediate_size", L.FFN), ("num_attention_heads", L.HEADS),
                           ("num_key_value_heads", L.HEADS), ("num_hidden_layers", L.LAYERS), ("vocab_size", L.VOCAB),
                           ("max_position_embeddings", L.POSITIONS)):
            limits.check_int(getattr(self, key), bound, f"Model {self.name!r}: {key}")
        for key, bound in (("type_vocab_size", L.TYPE_VOCAB), ("word_embed_proj_dim", L.HIDDEN),
                           ("sliding_window", L.POSITIONS), ("num_local_experts", L.EXPERTS),
                           ("num_experts_per_tok", L.EXPERTS)):
            if getattr(self, key) != 0:
                limits.check_int(getattr(self, key), bound, f"Model {self.name!r}: {key}")
        if bool(self.num_local_experts) != bool(self.num_experts_per_tok) or \
                self.num_experts_per_tok > self.num_local_experts:
            raise MemplanError(f"Model {self.name!r}: num_experts_per_tok ({self.num_experts_per_tok}) must be "
                               f"between 1 and num_local_experts ({self.num_local_experts}) for a MoE model, "
                               "and both 0 for a dense one.")
        if self.explicit_head_dim:
            limits.check_int(self.explicit_head_dim, L.HIDDEN, f"Model {self.name!r}: head_dim")
        if (self.hidden_size % self.num_attention_heads and not self.explicit_head_dim) \
                or self.num_attention_heads % self.num_key_value_heads:
            raise MemplanError(f"Model {self.name!r}: hidden_size {self.hidden_size} must be divisible by "
                               f"num_attention_heads {self.num_attention_heads}, itself a multiple of "
                               f"num_key_value_heads {self.num_key_value_heads}.")

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_dim(self) -> int:
        """Width of q and of the attention output: heads x head_dim (== hidden unless head_dim is explicit)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def is_decoder(self) -> bool:
        return self.family != "bert"


@cached_hash
@dataclass(frozen=True)
class GPUProfile:
    """One GPU model. Capacity is what CUDA can allocate (usable_mib when known)."""

    id: str
    name: str
    memory_mib: int  # total framebuffer as nvidia-smi reports it
    memory_source: str
    architecture: str = ""
    compute_capability: str = ""
    bf16: bool = True
    memory_bandwidth_gbs: float = 0.0
    usable_mib: int | None = None  # cudaMemGetInfo total, when a public source shows it
    price_per_hour_usd: float | None = None
    price_purchase_usd: float | None = None
    price_date: str = ""
    price_source: str = ""
    cuda_context_mib: int | None = None  # memory outside PyTorch's allocator (context, kernels, handles)
    cuda_context_source: str = ""
    cublas_workspace_kib: int | None = None  # cuBLAS workspaces allocated through the caching allocator
    cublas_workspace_source: str = ""

    @property
    def capacity_bytes(self) -> int:
        return (self.usable_mib or self.memory_mib) * MiB


# ---------------------------------------------------------------- models

def _profiles_dir() -> str:
    """The folder of the installed profile files (the package memplan.profile_data, from profiles/).

    Found through the package itself, with os.path: importlib.resources and pathlib would
    add their imports (zipfile, tempfile, urllib.parse, ...) to every CLI start; pathlib is
    imported only for a user's own file.
    """
    import memplan.profile_data

    return os.path.dirname(memplan.profile_data.__file__)


@lru_cache(maxsize=1)
def _builtin_model_files() -> dict[str, str]:
    models = os.path.join(_profiles_dir(), "models")
    return {f[: -len(".json")]: os.path.join(models, f) for f in os.listdir(models) if f.endswith(".json")}


def model_names() -> list[str]:
    return sorted(_builtin_model_files(), key=_natural_key)


def _natural_key(name: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class _Reader:
    """Typed, bounded reads of one config.json: every bad value is a MemplanError naming its key."""

    def __init__(self, cfg: dict, where: str):
        self.cfg, self.where = cfg, where

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def integer(self, key: str, bound, default=None) -> int:
        val = self.cfg.get(key)
        if val is None:
            if default is None:
                raise MemplanError(f"{self.where}: missing key '{key}' (expected a positive integer).")
            return default
        if isinstance(val, str):
            raise MemplanError(f"{self.where}: key '{key}' must be a number, got the string {val!r}.")
        return limits.check_int(val, bound, f"{self.where}: key '{key}'")

    def flag(self, key: str, default: bool) -> bool:
        val = self.cfg.get(key)
        if val is None:
            return default
        if not isinstance(val, bool):
            raise MemplanError(f"{self.where}: key '{key}' must be true or false, got {val!r}.")
        return val

    def number(self, key: str, bound, default: float) -> float:
        val = self.cfg.get(key)
        if val is None:
            return default
        if isinstance(val, str):
            raise MemplanError(f"{self.where}: key '{key}' must be a number, got the string {val!r}.")
        return limits.check_float(val, bound, f"{self.where}: key '{key}'", low_open=True)

    def text(self, key: str, default: str) -> str:
        val = self.cfg.get(key)
        if val is None:
            return default
        if not isinstance(val, str) or len(val) > 64:
            raise MemplanError(f"{self.where}: key '{key}' must be a short string such as {default!r}, got {val!r}.")
        return val

    def refuse(self, key: str, why: str) -> None:
        raise MemplanError(f"{self.where}: key '{key}' ({self.cfg[key]!r}): {why}")


# Keys that change the architecture in ways memplan does not model: refused, naming the key,
# rather than estimated as a plain dense model (a silent wrong answer).
_UNMODELLED = {
    "quantization_config": "a quantized checkpoint is not read from its config; remove the key, and give "
                           "--weights nf4 (QLoRA) or --weights int8 (Q-GaLore) to train on quantized base weights.",
    "add_cross_attention": "cross-attention layers are not modelled (decoder-only and encoder-only models are).",
    "is_encoder_decoder": "encoder-decoder models are not modelled (decoder-only and encoder-only models are).",
    "use_sliding_window": "sliding-window attention is modelled only as Mistral's 'sliding_window'.",
    "layer_types": "models mixing attention types per layer are not modelled.",
}
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
             "moe_intermediate_size", "shared_expert_intermediate_size")
MOE_TYPES = ("mixtral",)


def _check_unmodelled(r: _Reader, family: str, mtype: str) -> None:
    for key, why in _UNMODELLED.items():
        val = r.cfg.get(key)
        if val is None or val is False or (key == "layer_types" and isinstance(val, list)
                                           and all(v == "full_attention" for v in val)):
            continue
        r.refuse(key, why)
    if mtype not in MOE_TYPES:
        for key in _MOE_KEYS:
            if r.cfg.get(key) not in (None, 0):
                r.refuse(key, f"a mixture of experts under model_type '{mtype}', which memplan does not model "
                              "as one. Mixtral-style MoE decoders are modelled with model_type \"mixtral\".")
    if family == "bert" and r.cfg.get("position_embedding_type", "absolute") != "absolute":
        r.refuse("position_embedding_type", "relative position embeddings are not modelled (only 'absolute').")


def model_from_config(cfg: dict, name: str, where: str, description: str = "") -> ModelProfile:
    """Build a ModelProfile from a Hugging Face config.json dict (strictly: types, bounds, features)."""
    if not isinstance(cfg, dict):
        raise MemplanError(f"{where}: expected a JSON object (a Hugging Face config.json), got {type(cfg).__name__}.")
    mtype = cfg.get("model_type")
    if mtype is None:
        raise MemplanError(f"{where}: missing key 'model_type' (a Hugging Face config.json has it, e.g. \"llama\").")
    family = FAMILIES.get(mtype) if isinstance(mtype, str) else None
    if family is None:
        raise MemplanError(
            f"{where}: unsupported model_type {str(mtype)[:64]!r}. Supported: {', '.join(sorted(FAMILIES))} "
            "(LLaMA-style decoders with GQA, Qwen2 / Qwen2.5 / Qwen3, Mixtral MoE decoders, BERT/RoBERTa encoders, "
            "OPT/GPT-2 decoders).")
    r = _Reader(cfg, where)
    _check_unmodelled(r, family, mtype)
    L = limits
    if family == "gpt2":
        h = r.integer("n_embd", L.HIDDEN)
        common = dict(
            hidden_size=h, intermediate_size=r.integer("n_inner", L.FFN, default=4 * h),
            num_attention_heads=r.integer("n_head", L.HEADS), num_hidden_layers=r.integer("n_layer", L.LAYERS),
            max_position_embeddings=r.integer("n_positions", L.POSITIONS),
            hidden_act=r.text("activation_function", "gelu_new"),
            tie_word_embeddings=r.flag("tie_word_embeddings", True), attention_bias=True, mlp_bias=True,
        )
        common["num_key_value_heads"] = common["num_attention_heads"]
        common.update(_dropouts(cfg, where, "attn_pdrop", "resid_pdrop", 0.1))
    else:
        h = r.integer("hidden_size", L.HIDDEN)
        heads = r.integer("num_attention_heads", L.HEADS)
        common = dict(
            hidden_size=h, intermediate_size=r.integer("ffn_dim" if family == "opt" else "intermediate_size", L.FFN),
            num_attention_heads=heads, num_key_value_heads=r.integer("num_key_value_heads", L.HEADS, default=heads),
            num_hidden_layers=r.integer("num_hidden_layers", L.LAYERS),
            max_position_embeddings=r.integer("max_position_embeddings", L.POSITIONS, default=2048),
            hidden_act=r.text("hidden_act", r.text("activation_function", _DEFAULT_ACT[family])),
        )
        if family == "llama":
            qwen2, qwen3 = mtype == "qwen2", mtype == "qwen3"
            common.update(
                tie_word_embeddings=r.flag("tie_word_embeddings", False),
                # Qwen2's attention has biases on q, k and v, always (its config has no key for them)
                attention_bias=False if qwen2 else r.flag("attention_bias", False), qkv_bias=qwen2,
                mlp_bias=False if qwen2 else r.flag("mlp_bias", False),
                rms_norm_eps=r.number("rms_norm_eps", L.EPS, 1e-6),
                rope_theta=r.number("rope_theta", L.ROPE_THETA, 10000.0),
                # Qwen2 / Qwen3 read 'sliding_window' only with 'use_sliding_window' (refused above): no window
                sliding_window=0 if qwen2 or qwen3 else r.integer("sliding_window", L.POSITIONS, default=0),
                qk_norm=qwen3,
                **_dropouts(cfg, where, "attention_dropout", None, 0.0),
            )
            if r.has("head_dim") and r.integer("head_dim", L.HIDDEN) * heads != h:
                # Mistral-NeMo style: q and the attention output are heads x head_dim wide, not hidden
                common["explicit_head_dim"] = r.integer("head_dim", L.HIDDEN)
            if mtype in MOE_TYPES:
                common.update(_moe_fields(r))
        elif family == "bert":
            common.update(tie_word_embeddings=r.flag("tie_word_embeddings", True), attention_bias=True,
                          mlp_bias=True, type_vocab_size=r.integer("type_vocab_size", L.TYPE_VOCAB, default=2),
                          **_dropouts(cfg, where, "attention_probs_dropout_prob", "hidden_dropout_prob", 0.1))
        else:  # opt
            bias = r.flag("enable_bias", True)
            common.update(tie_word_embeddings=r.flag("tie_word_embeddings", True), attention_bias=bias,
                          mlp_bias=bias, word_embed_proj_dim=r.integer("word_embed_proj_dim", L.HIDDEN, default=h),
                          attention_dropout=_prob(cfg, "attention_dropout", where, 0.0),
                          hidden_dropout=_prob(cfg, "dropout", where, 0.1))
    vocab = r.integer("vocab_size", L.VOCAB)
    if family != "llama" and r.has("head_dim") and \
            r.integer("head_dim", L.HIDDEN) * common["num_attention_heads"] != common["hidden_size"]:
        r.refuse("head_dim", "a head width other than hidden_size / num_attention_heads is modelled for "
                             "LLaMA-style decoders only.")
    if common["hidden_size"] % common["num_attention_heads"] and not common.get("explicit_head_dim"):
        raise MemplanError(f"{where}: hidden size {common['hidden_size']} is not divisible by the number of "
                           f"attention heads {common['num_attention_heads']}.")
    if common["num_attention_heads"] % common["num_key_value_heads"]:
        raise MemplanError(f"{where}: num_attention_heads {common['num_attention_heads']} is not a multiple of "
                           f"num_key_value_heads {common['num_key_value_heads']}.")
    return ModelProfile(name=name, family=family, model_type=mtype, vocab_size=vocab,
                        description=description, source=where, **common)


def _moe_fields(r: _Reader) -> dict:
    """Mixtral: experts, router and top-k (memplan/moe.py models them)."""
    experts = r.integer("num_local_experts", limits.EXPERTS)
    top_k = r.integer("num_experts_per_tok", limits.EXPERTS)
    if top_k > experts:
        raise MemplanError(f"{r.where}: key 'num_experts_per_tok' ({top_k}) is larger than 'num_local_experts' "
                           f"({experts}): each token is routed to at most every expert.")
    if r.cfg.get("router_jitter_noise") not in (None, 0):
        r.refuse("router_jitter_noise", "router jitter in training (an extra noise tensor per MoE block) is not "
                                        "modelled; set it to 0.")
    if r.flag("output_router_logits", False):
        r.refuse("output_router_logits", "the auxiliary load-balancing loss (router logits of every layer kept "
                                         "until the loss) is not modelled; set it to false.")
    return dict(num_local_experts=experts, num_experts_per_tok=top_k)


# the Hugging Face config classes' default activation per family (OPTConfig: relu; BertConfig: gelu)
_DEFAULT_ACT = {"llama": "silu", "opt": "relu", "bert": "gelu"}


def _prob(cfg: dict, key: str, where: str, default: float) -> float:
    """A dropout probability from config.json; absent: the Hugging Face class's default."""
    val = cfg.get(key, default)
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val < 1:
        raise MemplanError(f"{where}: key '{key}' must be a dropout probability in [0, 1), got {val!r}.")
    return float(val)


def _dropouts(cfg: dict, where: str, attn_key: str, hidden_key: str | None, default: float) -> dict:
    """attention_dropout / hidden_dropout from the family's keys (GPT-2: attn_pdrop, resid_pdrop;
    BERT: attention_probs_dropout_prob, hidden_dropout_prob; LLaMA: attention_dropout only)."""
    out = {"attention_dropout": _prob(cfg, attn_key, where, default)}
    if hidden_key is not None:
        out["hidden_dropout"] = _prob(cfg, hidden_key, where, default)
    return out


def _read_json(path, where: str) -> dict:
    try:
        with open(path, "rb") as f:  # stops past the limit
            data = f.read(limits.FILE_BYTES + 1)
    except OSError as e:
        raise MemplanError(f"Cannot read {where}: {e.strerror or e}.") from None
    return limits.parse_json(data, where)


@lru_cache(maxsize=64)
def _load_builtin(name: str) -> ModelProfile:
    f = _builtin_model_files()[name]
    cfg = _read_json(f, f"profile {os.path.basename(f)}")
    meta = cfg.get("_memplan", {})
    return model_from_config(cfg, name, "built-in", meta.get("description", ""))


def load_model(spec: "str | os.PathLike | ModelProfile") -> ModelProfile:
    """A built-in profile name, a path to a config.json (or a folder holding one), or a profile."""
    if isinstance(spec, ModelProfile):
        return spec
    text = str(spec)
    if not text.strip():
        raise MemplanError("No model given: use a built-in profile name (see 'memplan models') or the path to "
                           "a Hugging Face config.json or the folder holding it.")
    if text in _builtin_model_files():
        return _load_builtin(text)
    from pathlib import Path

    path = Path(text).expanduser()
    looks_like_path = os.sep in text or text.endswith(".json") or path.exists()
    if looks_like_path:
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise MemplanError(f"No config.json at '{path}'. Give a built-in model name (see 'memplan models') "
                               "or the path to a Hugging Face config.json or the folder holding it.")
        return _load_config_path(str(path.resolve()), path.stat().st_mtime_ns)
    raise unknown("model", text, model_names(), "memplan models")


@lru_cache(maxsize=32)
def _load_config_path(path: str, _mtime: int) -> ModelProfile:
    from pathlib import Path

    p = Path(path)
    name = p.parent.name if p.name == "config.json" else p.stem
    return model_from_config(_read_json(p, path), name or p.stem, path)


# ---------------------------------------------------------------- GPUs

_GPU_FIELDS = {f.name: f for f in fields(GPUProfile)}
_GPU_REQUIRED = ("name", "memory_mib", "memory_source")


def _gpu_from_table(gid: str, table: dict, where: str, base: GPUProfile | None = None) -> GPUProfile:
    if not isinstance(table, dict):
        raise MemplanError(f"{where}: GPU '{gid}' must be a table of fields, got {table!r}.")
    values = {} if base is None else {f: getattr(base, f) for f in _GPU_FIELDS}
    for key, val in table.items():
        if key not in _GPU_FIELDS or key == "id":
            raise MemplanError(f"{where}: GPU '{gid}' has unknown key '{key}'. "
                               f"Allowed keys: {', '.join(k for k in _GPU_FIELDS if k != 'id')}.")
        typ = _GPU_FIELDS[key].type
        if key in ("memory_mib", "usable_mib", "cuda_context_mib"):
            limits.check_int(val, limits.GPU_MIB, f"{where}: GPU '{gid}' key '{key}' (MiB)")
        elif key == "cublas_workspace_kib":
            limits.check_int(val, limits.GPU_MIB, f"{where}: GPU '{gid}' key '{key}' (KiB)")
        elif key in ("memory_bandwidth_gbs", "price_per_hour_usd", "price_purchase_usd"):
            bound = limits.BANDWIDTH_GBS if key == "memory_bandwidth_gbs" else limits.PRICE_USD
            val = limits.check_float(val, bound, f"{where}: GPU '{gid}' key '{key}'")
        elif key == "bf16":
            if not isinstance(val, bool):
                raise MemplanError(f"{where}: GPU '{gid}' key 'bf16' must be true or false, got {val!r}.")
        elif "str" in str(typ) and (not isinstance(val, str) or len(val) > 1000):
            raise MemplanError(f"{where}: GPU '{gid}' key '{key}' must be a string (under 1,000 characters), "
                               f"got {str(val)[:80]!r}.")
        values[key] = val
    missing = [k for k in _GPU_REQUIRED if k not in values]
    if missing:
        raise MemplanError(f"{where}: GPU '{gid}' is missing required key '{missing[0]}'.")
    values["id"] = gid
    return GPUProfile(**values)


def _parse_gpu_file(path: "str | os.PathLike", where: str) -> dict:
    try:
        with open(path, "rb") as f:  # stops one byte past the limit
            raw = limits.check_size(f.read(limits.FILE_BYTES + 1), f"GPU file {where}")
    except OSError as e:
        raise MemplanError(f"Cannot read GPU file {where}: {e.strerror or e}.") from None
    if os.path.splitext(path)[1].lower() == ".json":
        data = limits.parse_json(raw, where, kind="a GPU file (one object per GPU)")
    else:
        import tomllib  # here: only GPU files need it (CLI start-up time)

        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MemplanError(f"{where} is not valid TOML: {reason}. (Use a .json suffix for JSON files.)") from None
        except RecursionError:
            raise MemplanError(f"{where} is nested too deeply to be a GPU file.") from None
    if not isinstance(data, dict) or not data:
        raise MemplanError(f"{where}: expected one table per GPU, e.g. [my-gpu] with name and memory_mib.")
    if len(data) > limits.GPU_PROFILES:
        raise MemplanError(f"{where}: {len(data):,} GPUs; a GPU file holds at most {limits.GPU_PROFILES:,} "
                           "(memplan plan searches every one).")
    for gid in data:
        if not gid.strip() or len(gid) > 64:
            raise MemplanError(f"{where}: GPU id {gid[:80]!r} must be 1 to 64 characters.")
    return data


@lru_cache(maxsize=8)
def _builtin_gpus() -> dict[str, GPUProfile]:
    data = _parse_gpu_file(os.path.join(_profiles_dir(), "gpus.toml"), "profiles/gpus.toml")
    return {gid: _gpu_from_table(gid, t, "profiles/gpus.toml") for gid, t in data.items()}


def load_gpus(gpu_file: "str | os.PathLike | None" = None) -> dict[str, GPUProfile]:
    """All GPU profiles: built-in ones, then the user's file adding or overriding."""
    gpus = dict(_builtin_gpus())
    if gpu_file is not None:
        from pathlib import Path

        path = Path(gpu_file).expanduser()
        if not path.is_file():
            raise MemplanError(f"GPU file '{gpu_file}' does not exist.")
        for gid, table in _parse_gpu_file(path, str(gpu_file)).items():
            gpus[gid] = _gpu_from_table(gid, table, str(gpu_file), base=gpus.get(gid))
    return gpus


def load_gpu(spec: "str | GPUProfile", gpu_file=None) -> GPUProfile:
    """A GPU profile by id (case-insensitive, '_' or ' ' accepted for '-'), or 'local' / 'local:N':
    this machine's GPU N, read through NVML (memplan/gpu_local.py)."""
    if isinstance(spec, GPUProfile):
        return spec
    text = str(spec).strip().lower()
    if text == "local" or text.startswith("local:"):
        from memplan.gpu_local import local_gpu

        index = text.partition(":")[2] or "0"
        if not index.isdigit() or len(index) > 4:
            raise MemplanError(f"Bad local GPU '{spec}': use 'local' or 'local:N' with N the GPU index (0, 1, ...).")
        return local_gpu(int(index))
    gpus = load_gpus(gpu_file)
    key = str(spec).strip().lower().replace("_", "-").replace(" ", "-")
    if key in gpus:
        return gpus[key]
    raise unknown("GPU", str(spec), gpus, "memplan gpus")
