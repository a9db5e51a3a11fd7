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
import tomllib
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from memplan.errors import MemplanError, unknown
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
}


@dataclass(frozen=True)
class ModelProfile:
    """One model architecture, in Hugging Face `config.json` terms."""

    name: str
    family: str  # "llama" (LLaMA/Mistral decoders, GQA), "bert" (BERT/RoBERTa encoders), "opt", "gpt2"
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
    mlp_bias: bool = False  # biases on the MLP linears
    type_vocab_size: int = 0  # BERT-style token-type embeddings
    word_embed_proj_dim: int = 0  # OPT: embedding width when it differs from hidden_size
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    description: str = ""
    source: str = "built-in"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def is_decoder(self) -> bool:
        return self.family != "bert"


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

    @property
    def capacity_bytes(self) -> int:
        return (self.usable_mib or self.memory_mib) * MiB


# ---------------------------------------------------------------- models

def _profiles_dir():
    return resources.files("memplan.profile_data")


@lru_cache(maxsize=1)
def _builtin_model_files() -> dict[str, Any]:
    models = _profiles_dir().joinpath("models")
    return {f.name[: -len(".json")]: f for f in models.iterdir() if f.name.endswith(".json")}


def model_names() -> list[str]:
    return sorted(_builtin_model_files(), key=_natural_key)


def _natural_key(name: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _need(cfg: dict, key: str, where: str, typ=int, default=None):
    if key not in cfg:
        if default is not None:
            return default
        raise MemplanError(f"{where}: missing key '{key}' (expected {typ.__name__}).")
    val = cfg[key]
    if typ is int and (isinstance(val, bool) or not isinstance(val, int) or val <= 0):
        raise MemplanError(f"{where}: key '{key}' must be a positive integer, got {val!r}.")
    if typ is bool and not isinstance(val, bool):
        raise MemplanError(f"{where}: key '{key}' must be true or false, got {val!r}.")
    if typ is float and (isinstance(val, bool) or not isinstance(val, (int, float))):
        raise MemplanError(f"{where}: key '{key}' must be a number, got {val!r}.")
    return val


def model_from_config(cfg: dict, name: str, where: str, description: str = "") -> ModelProfile:
    """Build a ModelProfile from a Hugging Face config.json dict."""
    if not isinstance(cfg, dict):
        raise MemplanError(f"{where}: expected a JSON object (a Hugging Face config.json), got {type(cfg).__name__}.")
    mtype = cfg.get("model_type")
    if mtype is None:
        raise MemplanError(f"{where}: missing key 'model_type' (a Hugging Face config.json has it, e.g. \"llama\").")
    family = FAMILIES.get(str(mtype))
    if family is None:
        raise MemplanError(
            f"{where}: unsupported model_type '{mtype}'. Supported: {', '.join(sorted(FAMILIES))} "
            "(LLaMA-style decoders with GQA, BERT/RoBERTa encoders, OPT/GPT-2 decoders)."
        )
    g = lambda key, typ=int, default=None: _need(cfg, key, where, typ, default)  # noqa: E731
    if family == "gpt2":
        h = g("n_embd")
        common = dict(
            hidden_size=h, intermediate_size=cfg.get("n_inner") or 4 * h,
            num_attention_heads=g("n_head"), num_hidden_layers=g("n_layer"),
            max_position_embeddings=g("n_positions"), hidden_act=str(cfg.get("activation_function", "gelu_new")),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)), attention_bias=True, mlp_bias=True,
        )
        common["num_key_value_heads"] = common["num_attention_heads"]
    else:
        h = g("hidden_size")
        heads = g("num_attention_heads")
        inter_key = "ffn_dim" if family == "opt" else "intermediate_size"
        common = dict(
            hidden_size=h, intermediate_size=g(inter_key), num_attention_heads=heads,
            num_key_value_heads=g("num_key_value_heads", default=heads), num_hidden_layers=g("num_hidden_layers"),
            max_position_embeddings=g("max_position_embeddings", default=2048),
            hidden_act=str(cfg.get("hidden_act", cfg.get("activation_function", "silu"))),
        )
        if family == "llama":
            common.update(
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=bool(cfg.get("attention_bias", False)), mlp_bias=bool(cfg.get("mlp_bias", False)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=float(cfg.get("rope_theta", 10000.0)),
            )
        elif family == "bert":
            common.update(tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)), attention_bias=True,
                          mlp_bias=True, type_vocab_size=int(cfg.get("type_vocab_size", 2)))
        else:  # opt
            bias = bool(cfg.get("enable_bias", True))
            common.update(tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)), attention_bias=bias,
                          mlp_bias=bias, word_embed_proj_dim=int(cfg.get("word_embed_proj_dim", h)))
    vocab = g("vocab_size")
    if common["hidden_size"] % common["num_attention_heads"]:
        raise MemplanError(f"{where}: hidden size {common['hidden_size']} is not divisible by the number of "
                           f"attention heads {common['num_attention_heads']}.")
    if common["num_attention_heads"] % common["num_key_value_heads"]:
        raise MemplanError(f"{where}: num_attention_heads {common['num_attention_heads']} is not a multiple of "
                           f"num_key_value_heads {common['num_key_value_heads']}.")
    return ModelProfile(name=name, family=family, model_type=str(mtype), vocab_size=vocab,
                        description=description, source=where, **common)


def _read_json(path, where: str) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise MemplanError(f"Cannot read {where}: {e.strerror or e}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MemplanError(f"{where} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from None


@lru_cache(maxsize=64)
def _load_builtin(name: str) -> ModelProfile:
    f = _builtin_model_files()[name]
    cfg = _read_json(f, f"profile {f.name}")
    meta = cfg.get("_memplan", {})
    return model_from_config(cfg, name, "built-in", meta.get("description", ""))


def load_model(spec: "str | os.PathLike | ModelProfile") -> ModelProfile:
    """A built-in profile name, a path to a config.json (or a folder holding one), or a profile."""
    if isinstance(spec, ModelProfile):
        return spec
    text = str(spec)
    if text in _builtin_model_files():
        return _load_builtin(text)
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
        if key in ("memory_mib", "usable_mib"):
            if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
                raise MemplanError(f"{where}: GPU '{gid}' key '{key}' must be a positive integer (MiB), got {val!r}.")
        elif key in ("memory_bandwidth_gbs", "price_per_hour_usd", "price_purchase_usd"):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or val < 0:
                raise MemplanError(f"{where}: GPU '{gid}' key '{key}' must be a non-negative number, got {val!r}.")
            val = float(val)
        elif key == "bf16":
            if not isinstance(val, bool):
                raise MemplanError(f"{where}: GPU '{gid}' key 'bf16' must be true or false, got {val!r}.")
        elif "str" in str(typ) and not isinstance(val, str):
            raise MemplanError(f"{where}: GPU '{gid}' key '{key}' must be a string, got {val!r}.")
        values[key] = val
    missing = [k for k in _GPU_REQUIRED if k not in values]
    if missing:
        raise MemplanError(f"{where}: GPU '{gid}' is missing required key '{missing[0]}'.")
    values["id"] = gid
    return GPUProfile(**values)


def _parse_gpu_file(path: Path, where: str) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MemplanError(f"Cannot read GPU file {where}: {e.strerror or e}.") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MemplanError(f"{where} is not valid JSON: {e}.") from None
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise MemplanError(f"{where} is not valid TOML: {e}. (Use a .json suffix for JSON files.)") from None
    if not isinstance(data, dict) or not data:
        raise MemplanError(f"{where}: expected one table per GPU, e.g. [my-gpu] with name and memory_mib.")
    return data


@lru_cache(maxsize=8)
def _builtin_gpus() -> dict[str, GPUProfile]:
    f = _profiles_dir().joinpath("gpus.toml")
    data = _parse_gpu_file(Path(str(f)), "profiles/gpus.toml")
    return {gid: _gpu_from_table(gid, t, "profiles/gpus.toml") for gid, t in data.items()}


def load_gpus(gpu_file: "str | os.PathLike | None" = None) -> dict[str, GPUProfile]:
    """All GPU profiles: built-in ones, then the user's file adding or overriding."""
    gpus = dict(_builtin_gpus())
    if gpu_file is not None:
        path = Path(gpu_file).expanduser()
        if not path.is_file():
            raise MemplanError(f"GPU file '{gpu_file}' does not exist.")
        for gid, table in _parse_gpu_file(path, str(gpu_file)).items():
            gpus[gid] = _gpu_from_table(gid, table, str(gpu_file), base=gpus.get(gid))
    return gpus


def load_gpu(spec: "str | GPUProfile", gpu_file=None) -> GPUProfile:
    """A GPU profile by id (case-insensitive, '_' or ' ' accepted for '-')."""
    if isinstance(spec, GPUProfile):
        return spec
    gpus = load_gpus(gpu_file)
    key = str(spec).strip().lower().replace("_", "-").replace(" ", "-")
    if key in gpus:
        return gpus[key]
    raise unknown("GPU", str(spec), gpus, "memplan gpus")
