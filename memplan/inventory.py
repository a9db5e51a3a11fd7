"""The per-tensor inventory of a model: every parameter's name, shape and role.

Names are the Hugging Face names (see docs/CONTRACT.md), so the inventory can be
matched tensor by tensor against the bundled torch model. Parameter counts are
exact: llama-7b has 6,738,415,616 parameters.

A weight is *projected* (gets the low-rank treatment of GaLore-style methods, or a
LoRA adapter) when it is 2-D, named `<module>.weight`, and the module path ends with
one of the target modules at a dot boundary (`is_target`). The same rule and the same
defaults are used by `memplan.optim.projected_param_groups`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from memplan.errors import MemplanError, did_you_mean
from memplan.profiles import ModelProfile

DEFAULT_TARGET_MODULES = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "bert": ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


@dataclass(frozen=True)
class TensorSpec:
    """One parameter tensor of a model: its name, shape and role in the block."""

    name: str
    shape: tuple[int, ...]
    role: str  # embedding, position_embedding, attention, mlp, norm, bias, head
    projected: bool = False

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def is_target(module_path: str, targets) -> bool:
    """True when `module_path` ends with one of `targets` at a dot boundary."""
    return any(module_path == t or module_path.endswith("." + t) for t in targets)


def _spec(name, shape, role, targets) -> TensorSpec:
    projected = len(shape) == 2 and name.endswith(".weight") and role in ("attention", "mlp") \
        and is_target(name[: -len(".weight")], targets)
    return TensorSpec(name, tuple(shape), role, projected)


def _linear(prefix, out_f, in_f, role, bias, targets):
    yield _spec(f"{prefix}.weight", (out_f, in_f), role, targets)
    if bias:
        yield TensorSpec(f"{prefix}.bias", (out_f,), "bias")


def _layernorm(prefix, h, bias=True):
    yield TensorSpec(f"{prefix}.weight", (h,), "norm")
    if bias:
        yield TensorSpec(f"{prefix}.bias", (h,), "norm")


def _llama(p: ModelProfile, t):
    h, i, kv, ab, mb = p.hidden_size, p.intermediate_size, p.kv_dim, p.attention_bias, p.mlp_bias
    q = p.q_dim  # == h unless config.json sets head_dim (Mistral-NeMo: 32 heads x 128 on a 5120 stream)
    yield TensorSpec("model.embed_tokens.weight", (p.vocab_size, h), "embedding")
    for n in range(p.num_hidden_layers):
        b = f"model.layers.{n}"
        yield TensorSpec(f"{b}.input_layernorm.weight", (h,), "norm")
        qkv_b = ab or p.qkv_bias  # Qwen2: q, k and v biased, o not
        yield from _linear(f"{b}.self_attn.q_proj", q, h, "attention", qkv_b, t)
        yield from _linear(f"{b}.self_attn.k_proj", kv, h, "attention", qkv_b, t)
        yield from _linear(f"{b}.self_attn.v_proj", kv, h, "attention", qkv_b, t)
        yield from _linear(f"{b}.self_attn.o_proj", h, q, "attention", ab, t)
        if p.qk_norm:  # Qwen3: one RMSNorm weight per head width, shared by the heads
            yield TensorSpec(f"{b}.self_attn.q_norm.weight", (p.head_dim,), "norm")
            yield TensorSpec(f"{b}.self_attn.k_norm.weight", (p.head_dim,), "norm")
        yield TensorSpec(f"{b}.post_attention_layernorm.weight", (h,), "norm")
        if p.num_local_experts:
            yield from moe_tensors(p, f"{b}.mlp")
            continue
        yield from _linear(f"{b}.mlp.gate_proj", i, h, "mlp", mb, t)
        yield from _linear(f"{b}.mlp.up_proj", i, h, "mlp", mb, t)
        yield from _linear(f"{b}.mlp.down_proj", h, i, "mlp", mb, t)
    yield TensorSpec("model.norm.weight", (h,), "norm")
    if not p.tie_word_embeddings:
        yield TensorSpec("lm_head.weight", (p.vocab_size, h), "head")


def _bert(p: ModelProfile, t):
    h, i = p.hidden_size, p.intermediate_size
    base = "roberta" if "roberta" in p.model_type else "bert"
    e = f"{base}.embeddings"
    yield TensorSpec(f"{e}.word_embeddings.weight", (p.vocab_size, h), "embedding")
    yield TensorSpec(f"{e}.position_embeddings.weight", (p.max_position_embeddings, h), "position_embedding")
    if p.type_vocab_size:
        yield TensorSpec(f"{e}.token_type_embeddings.weight", (p.type_vocab_size, h), "position_embedding")
    yield from _layernorm(f"{e}.LayerNorm", h)
    for n in range(p.num_hidden_layers):
        b = f"{base}.encoder.layer.{n}"
        for proj in ("query", "key", "value"):
            yield from _linear(f"{b}.attention.self.{proj}", h, h, "attention", True, t)
        yield from _linear(f"{b}.attention.output.dense", h, h, "attention", True, t)
        yield from _layernorm(f"{b}.attention.output.LayerNorm", h)
        yield from _linear(f"{b}.intermediate.dense", i, h, "mlp", True, t)
        yield from _linear(f"{b}.output.dense", h, i, "mlp", True, t)
        yield from _layernorm(f"{b}.output.LayerNorm", h)
    # masked-LM head; its decoder weight is tied to the word embeddings
    head = "lm_head" if base == "roberta" else "cls.predictions.transform"
    yield from _linear(f"{head}.dense", h, h, "head", True, ())
    yield from _layernorm(f"{head}.layer_norm" if base == "roberta" else f"{head}.LayerNorm", h)
    yield TensorSpec("lm_head.bias" if base == "roberta" else "cls.predictions.bias", (p.vocab_size,), "bias")
    if not p.tie_word_embeddings:
        yield TensorSpec(f"{'lm_head' if base == 'roberta' else 'cls.predictions'}.decoder.weight",
                         (p.vocab_size, h), "head")


def _opt(p: ModelProfile, t):
    h, i, bias = p.hidden_size, p.intermediate_size, p.attention_bias
    d = "model.decoder"
    wd = p.word_embed_proj_dim or h
    yield TensorSpec(f"{d}.embed_tokens.weight", (p.vocab_size, wd), "embedding")
    # OPT's learned positions are offset by 2 rows
    yield TensorSpec(f"{d}.embed_positions.weight", (p.max_position_embeddings + 2, h), "position_embedding")
    if wd != h:
        yield TensorSpec(f"{d}.project_out.weight", (wd, h), "head")
        yield TensorSpec(f"{d}.project_in.weight", (h, wd), "embedding")
    for n in range(p.num_hidden_layers):
        b = f"{d}.layers.{n}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            yield from _linear(f"{b}.self_attn.{proj}", h, h, "attention", bias, t)
        yield from _layernorm(f"{b}.self_attn_layer_norm", h)
        yield from _linear(f"{b}.fc1", i, h, "mlp", bias, t)
        yield from _linear(f"{b}.fc2", h, i, "mlp", bias, t)
        yield from _layernorm(f"{b}.final_layer_norm", h)
    yield from _layernorm(f"{d}.final_layer_norm", h)
    if not p.tie_word_embeddings:
        yield TensorSpec("lm_head.weight", (p.vocab_size, wd), "head")


def _gpt2(p: ModelProfile, t):
    h, i = p.hidden_size, p.intermediate_size
    yield TensorSpec("transformer.wte.weight", (p.vocab_size, h), "embedding")
    yield TensorSpec("transformer.wpe.weight", (p.max_position_embeddings, h), "position_embedding")
    for n in range(p.num_hidden_layers):
        b = f"transformer.h.{n}"
        yield from _layernorm(f"{b}.ln_1", h)
        # GPT-2's Conv1D stores weights as (in_features, out_features)
        yield _spec(f"{b}.attn.c_attn.weight", (h, 3 * h), "attention", t)
        yield TensorSpec(f"{b}.attn.c_attn.bias", (3 * h,), "bias")
        yield _spec(f"{b}.attn.c_proj.weight", (h, h), "attention", t)
        yield TensorSpec(f"{b}.attn.c_proj.bias", (h,), "bias")
        yield from _layernorm(f"{b}.ln_2", h)
        yield _spec(f"{b}.mlp.c_fc.weight", (h, i), "mlp", t)
        yield TensorSpec(f"{b}.mlp.c_fc.bias", (i,), "bias")
        yield _spec(f"{b}.mlp.c_proj.weight", (i, h), "mlp", t)
        yield TensorSpec(f"{b}.mlp.c_proj.bias", (h,), "bias")
    yield from _layernorm("transformer.ln_f", h)
    if not p.tie_word_embeddings:
        yield TensorSpec("lm_head.weight", (p.vocab_size, h), "head")


_BUILDERS = {"llama": _llama, "bert": _bert, "opt": _opt, "gpt2": _gpt2}


def default_targets(profile: ModelProfile) -> tuple[str, ...]:
    """The family's default target modules; a mixture of experts keeps attention only (its experts are
    3-D parameters, not linears, and its router is not projected)."""
    targets = DEFAULT_TARGET_MODULES[profile.family]
    if profile.num_local_experts:
        targets = tuple(t for t in targets if t not in ("gate_proj", "up_proj", "down_proj"))
    return targets


def resolve_targets(profile: ModelProfile, target_modules=None) -> tuple[str, ...]:
    """The target modules as a tuple: the model's default, or the user's list (each one checked)."""
    if target_modules is None:
        return default_targets(profile)
    if isinstance(target_modules, str):
        target_modules = target_modules.split(",")
    if not all(isinstance(s, str) for s in target_modules):
        raise MemplanError(f"Target modules must be module names such as 'q_proj,v_proj', got {target_modules!r}.")
    targets = tuple(sorted({s.strip() for s in target_modules if s.strip()}))
    if not targets:
        raise MemplanError("--target-modules is empty: give module names such as 'q_proj,v_proj'.")
    return _check_targets(profile, targets)


@lru_cache(maxsize=256)
def _check_targets(profile: ModelProfile, targets: tuple[str, ...]) -> tuple[str, ...]:
    """Every target must match a projectable (2-D attention or MLP) weight: a typo is an error, not a no-op."""
    modules = [s.name[: -len(".weight")] for s, _ in shape_groups(profile, ())
               if len(s.shape) == 2 and s.name.endswith(".weight") and s.role in ("attention", "mlp")]
    defaults = ",".join(default_targets(profile))
    for t in targets:
        if not any(is_target(m, (t,)) for m in modules):
            leaves = {m.rsplit(".", 1)[-1] for m in modules}
            raise MemplanError(f"Target module '{t}' matches no 2-D weight of {profile.name}.{did_you_mean(t, leaves)} "
                               f"Defaults for this model: {defaults}.")
    return targets


# a block's tensors are named '<prefix>.layers.0.', '.layer.0.' (BERT) or '.h.0.' (GPT-2)
_FIRST_BLOCK = re.compile(r"\.(?:layers|layer|h)\.0\.")


@lru_cache(maxsize=512)
def shape_groups(profile: ModelProfile, targets: tuple[str, ...]) -> tuple[tuple[TensorSpec, int], ...]:
    """The inventory as (tensor, how many): the first block's tensors stand for every block.

    Built from a one-block copy of the model, so its cost does not grow with the depth
    (every block of a family has the same tensors).
    """
    one = replace(profile, num_hidden_layers=1)
    L = profile.num_hidden_layers
    return tuple((s, L if _FIRST_BLOCK.search(s.name) else 1) for s in _inventory(one, targets))


@lru_cache(maxsize=256)
def block_order(profile: ModelProfile, targets: tuple[str, ...]):
    """(tensors before the blocks, one block's tensors, tensors after), in model order: the whole
    model is `before + block * num_hidden_layers + after` (every block has the same tensors)."""
    specs = [s for s, _ in shape_groups(profile, targets)]
    first = [i for i, s in enumerate(specs) if _FIRST_BLOCK.search(s.name)]
    if not first:
        return tuple(specs), (), ()
    return tuple(specs[:first[0]]), tuple(specs[first[0]:first[-1] + 1]), tuple(specs[first[-1] + 1:])


@lru_cache(maxsize=256)
def _inventory(profile: ModelProfile, targets: tuple[str, ...]) -> tuple[TensorSpec, ...]:
    return tuple(_BUILDERS[profile.family](profile, targets))


def inventory(model, target_modules=None) -> tuple[TensorSpec, ...]:
    """Every parameter tensor of `model` (a profile name, config path or ModelProfile)."""
    from memplan.profiles import load_model

    profile = load_model(model)
    return _inventory(profile, resolve_targets(profile, target_modules))


def parameter_count(model) -> int:
    from memplan.profiles import load_model

    return sum(s.numel * n for s, n in shape_groups(load_model(model), ()))


from memplan.moe import moe_tensors  # noqa: E402  (moe.py uses TensorSpec from this module)
