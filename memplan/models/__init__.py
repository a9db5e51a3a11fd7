"""Bundled torch models: the LLaMA-style reference decoder and LoRA wrapping."""
from memplan.models.llama import LlamaForCausalLM, build_model, causal_lm_loss, resolve_dtype
from memplan.models.lora import DEFAULT_TARGETS, apply_lora, merge_lora

__all__ = ["LlamaForCausalLM", "build_model", "causal_lm_loss", "resolve_dtype",
           "apply_lora", "merge_lora", "DEFAULT_TARGETS"]
