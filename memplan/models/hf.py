"""The Hugging Face ``LlamaForCausalLM`` built from the same profile (random
weights, no download), to measure what users actually train next to the bundled
model. Needs ``transformers`` (the dev extra)."""
from __future__ import annotations

import torch

from memplan.models.llama import resolve_dtype

__all__ = ["build_hf_model", "hf_config"]


def hf_config(profile, attn_implementation: str = "sdpa"):
    from transformers import LlamaConfig
    cfg = LlamaConfig(
        hidden_size=profile.hidden_size, intermediate_size=profile.intermediate_size,
        num_attention_heads=profile.num_attention_heads,
        num_key_value_heads=getattr(profile, "num_key_value_heads", None) or profile.num_attention_heads,
        num_hidden_layers=profile.num_hidden_layers, vocab_size=profile.vocab_size,
        max_position_embeddings=getattr(profile, "max_position_embeddings", 2048),
        rms_norm_eps=getattr(profile, "rms_norm_eps", 1e-6),
        rope_theta=getattr(profile, "rope_theta", 10000.0),
        tie_word_embeddings=bool(getattr(profile, "tie_word_embeddings", False)),
        hidden_act="silu", use_cache=False)
    cfg._attn_implementation = attn_implementation
    return cfg


def build_hf_model(profile, *, dtype=torch.bfloat16, device="cpu", checkpointing=False,
                   attn_implementation="sdpa"):
    """``transformers.LlamaForCausalLM`` with random weights, in ``dtype`` on ``device``
    (works under FakeTensorMode, like ``build_model``)."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError as e:
        raise ImportError("Measuring the transformers model needs transformers: pip install 'memplan[dev]'") from e
    if isinstance(profile, str):
        from memplan.profiles import load_model
        profile = load_model(profile)
    old = torch.get_default_dtype()
    torch.set_default_dtype(resolve_dtype(dtype))
    try:
        with torch.device(device):
            model = LlamaForCausalLM(hf_config(profile, attn_implementation))
    finally:
        torch.set_default_dtype(old)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
