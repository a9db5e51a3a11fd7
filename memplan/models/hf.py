"""The Hugging Face class of a profile's family, built from the profile (random weights,
no download), to measure what users actually train next to the bundled model.

| profile family / model_type | class |
|---|---|
| llama (``llama``), mistral (``mistral``) | ``LlamaForCausalLM``, ``MistralForCausalLM`` |
| llama with experts (``mixtral``) | ``MixtralForCausalLM`` |
| llama with q, k, v biases (``qwen2``) | ``Qwen2ForCausalLM`` |
| llama with q and k norms (``qwen3``) | ``Qwen3ForCausalLM`` |
| gpt2 | ``GPT2LMHeadModel`` |
| opt | ``OPTForCausalLM`` |
| bert / roberta / xlm-roberta | ``BertForMaskedLM``, ``RobertaForMaskedLM``, ``XLMRobertaForMaskedLM`` |

The config carries the profile's sizes, the attention implementation (``sdpa`` or
``eager``) and the dropout probabilities, and ``use_cache=False`` (a training step; with
the cache on, every layer also keeps a concatenated copy of its keys and values).
Needs ``transformers`` (the dev extra). Works under FakeTensorMode: the model is created
in the target dtype through the default dtype (``module.to(dtype)`` fails on fake tensors).
"""
from __future__ import annotations

import torch

from memplan.models.llama import resolve_dtype

__all__ = ["build_hf_model", "hf_config", "hf_class_name", "HF_CLASSES", "ATTN_IMPLEMENTATIONS"]

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "gpt2": "GPT2LMHeadModel",
              "opt": "OPTForCausalLM", "bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM",
              "xlm-roberta": "XLMRobertaForMaskedLM", "mixtral": "MixtralForCausalLM", "qwen2": "Qwen2ForCausalLM",
              "qwen3": "Qwen3ForCausalLM"}


def hf_class_name(profile) -> str | None:
    """The transformers class that ``build_hf_model`` builds for ``profile``; None when none."""
    return HF_CLASSES.get(getattr(profile, "model_type", "llama"))


def _config_kwargs(p, attn_dropout: float, hidden_dropout: float) -> dict:
    fam = p.family
    if fam == "gpt2":
        return dict(n_embd=p.hidden_size, n_head=p.num_attention_heads, n_layer=p.num_hidden_layers,
                    n_positions=p.max_position_embeddings, n_inner=p.intermediate_size, vocab_size=p.vocab_size,
                    activation_function=p.hidden_act, tie_word_embeddings=p.tie_word_embeddings,
                    attn_pdrop=attn_dropout, resid_pdrop=hidden_dropout, embd_pdrop=hidden_dropout)
    common = dict(hidden_size=p.hidden_size, num_attention_heads=p.num_attention_heads,
                  num_hidden_layers=p.num_hidden_layers, vocab_size=p.vocab_size,
                  max_position_embeddings=p.max_position_embeddings, tie_word_embeddings=p.tie_word_embeddings)
    if fam == "opt":
        return dict(common, ffn_dim=p.intermediate_size, word_embed_proj_dim=p.word_embed_proj_dim or p.hidden_size,
                    do_layer_norm_before=True, enable_bias=p.attention_bias, activation_function=p.hidden_act,
                    dropout=hidden_dropout, attention_dropout=attn_dropout)
    if fam == "bert":
        return dict(common, intermediate_size=p.intermediate_size, type_vocab_size=max(1, p.type_vocab_size),
                    hidden_act=p.hidden_act, hidden_dropout_prob=hidden_dropout,
                    attention_probs_dropout_prob=attn_dropout,
                    **({"pad_token_id": 1} if p.model_type != "bert" else {}))
    return dict(common, intermediate_size=p.intermediate_size, num_key_value_heads=p.num_key_value_heads,
                head_dim=p.head_dim, rms_norm_eps=p.rms_norm_eps, rope_theta=p.rope_theta,
                attention_bias=p.attention_bias, mlp_bias=p.mlp_bias, hidden_act="silu",
                attention_dropout=attn_dropout)


def hf_config(profile, attn_implementation: str = "sdpa", attn_dropout: float | None = None,
              hidden_dropout: float | None = None):
    """The transformers config of ``profile`` (dropouts default to the profile's)."""
    from transformers import AutoConfig

    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"Unknown attention implementation {attn_implementation!r}; "
                         f"expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    mtype = getattr(profile, "model_type", "llama")
    if mtype not in HF_CLASSES:
        raise ValueError(f"No Hugging Face class for model_type {mtype!r}; supported: {', '.join(HF_CLASSES)}")
    ad = profile.attention_dropout if attn_dropout is None else attn_dropout
    hd = profile.hidden_dropout if hidden_dropout is None else hidden_dropout
    kwargs = _config_kwargs(profile, ad, hd)
    if mtype == "mistral":
        kwargs["sliding_window"] = None  # memplan does not model the window (sequences below it are unaffected)
    if mtype == "qwen2":  # full attention in every layer (memplan refuses use_sliding_window)
        kwargs.update(use_sliding_window=False, sliding_window=None)
        del kwargs["attention_bias"], kwargs["mlp_bias"]  # Qwen2's biases are fixed by its class
    if mtype == "qwen3":
        kwargs.update(use_sliding_window=False, sliding_window=None)
        del kwargs["mlp_bias"]
    if mtype == "mixtral":  # memplan/moe.py: experts, router, top-k; no jitter, no auxiliary loss
        kwargs.update(num_local_experts=profile.num_local_experts, num_experts_per_tok=profile.num_experts_per_tok,
                      router_jitter_noise=0.0, output_router_logits=False, sliding_window=None)
    cfg = AutoConfig.for_model(mtype, **kwargs)
    cfg.use_cache = False
    cfg._attn_implementation = attn_implementation
    return cfg


def build_hf_model(profile, *, dtype=torch.bfloat16, device="cpu", checkpointing=False,
                   attn_implementation="sdpa", attn_dropout=None, hidden_dropout=None):
    """The profile family's transformers class with random weights, in ``dtype`` on ``device``
    (works under FakeTensorMode, like ``build_model``)."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError("Measuring the transformers model needs transformers: pip install 'memplan[dev]'") from e
    if isinstance(profile, str):
        from memplan.profiles import load_model
        profile = load_model(profile)
    cfg = hf_config(profile, attn_implementation, attn_dropout, hidden_dropout)
    cls = getattr(transformers, HF_CLASSES[profile.model_type])
    old = torch.get_default_dtype()
    torch.set_default_dtype(resolve_dtype(dtype))
    try:
        with torch.device(device):
            model = cls(cfg)
    finally:
        torch.set_default_dtype(old)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
