"""The bundled LLaMA-style decoder, built from a memplan model profile.

It follows the Hugging Face ``LlamaForCausalLM`` (transformers 5) op for op where
memory is concerned, so that what it saves for backward is what users' training
runs save:

- RMSNorm upcasts its input to fp32, normalizes in fp32 and casts back before
  multiplying by the weight (``LlamaRMSNorm``).
- RoPE ``cos``/``sin`` are computed once per forward in fp32 and cast to the
  compute dtype, shape ``(B, T, hs)``, shared by every block.
- attention is ``scaled_dot_product_attention(..., is_causal=True,
  enable_gqa=True)`` with no mask (HF's ``use_gqa_in_sdpa`` path), or the eager
  softmax path (``attn_implementation="eager"``) that keeps the ``T x T`` matrix.
- SwiGLU MLP ``down(silu(gate(x)) * up(x))``; untied LM head unless the profile
  ties it; the loss upcasts the logits to fp32 (``ForCausalLMLoss``).

Parameter names are the Hugging Face names (docs/CONTRACT.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["LlamaForCausalLM", "build_model"]


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float, dtype, device):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, dtype=dtype, device=device))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg, dtype, device, attn_implementation):
        super().__init__()
        h, nh, nkv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        self.hs = getattr(cfg, "head_dim", None) or h // nh
        self.nh, self.nkv = nh, nkv
        self.attn_implementation = attn_implementation
        kw = dict(bias=False, dtype=dtype, device=device)
        self.q_proj = nn.Linear(h, nh * self.hs, **kw)
        self.k_proj = nn.Linear(h, nkv * self.hs, **kw)
        self.v_proj = nn.Linear(h, nkv * self.hs, **kw)
        self.o_proj = nn.Linear(nh * self.hs, h, **kw)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, -1, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, -1, self.hs).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.attn_implementation == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               enable_gqa=self.nh != self.nkv)
        else:  # eager: HF eager_attention_forward, keeps the (T, T) probabilities
            rep = self.nh // self.nkv
            if rep > 1:
                k = k[:, :, None].expand(B, self.nkv, rep, T, self.hs).reshape(B, self.nh, T, self.hs)
                v = v[:, :, None].expand(B, self.nkv, rep, T, self.hs).reshape(B, self.nh, T, self.hs)
            att = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.hs))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
            y = torch.matmul(att, v)
        y = y.transpose(1, 2).reshape(B, T, -1).contiguous()
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg, dtype, device):
        super().__init__()
        h, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(bias=False, dtype=dtype, device=device)
        self.gate_proj = nn.Linear(h, f, **kw)
        self.up_proj = nn.Linear(h, f, **kw)
        self.down_proj = nn.Linear(f, h, **kw)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, dtype, device, attn_implementation):
        super().__init__()
        self.self_attn = Attention(cfg, dtype, device, attn_implementation)
        self.mlp = MLP(cfg, dtype, device)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg, dtype, device, attn_implementation):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, dtype, device, attn_implementation)
                                    for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        hs = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        theta = float(getattr(cfg, "rope_theta", 10000.0))
        inv_freq = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=torch.float32, device=device) / hs))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.gradient_checkpointing = False

    def rope(self, x, T):
        # computed without grad in fp32, cast to the compute dtype, like HF's LlamaRotaryEmbedding
        with torch.no_grad():
            pos = torch.arange(T, device=x.device, dtype=torch.float32)
            freqs = pos[None, :, None] * self.inv_freq[None, None, :]  # (1, T, hs/2)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.rope(x, input_ids.shape[1])
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    """LLaMA-style causal LM; ``forward(input_ids, labels)`` returns the mean loss."""

    def __init__(self, cfg, *, dtype=torch.bfloat16, device="cpu", attn_implementation="sdpa"):
        super().__init__()
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
        self.config = cfg
        self.model = LlamaModel(cfg, dtype, device, attn_implementation)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype, device=device)
        if getattr(cfg, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def gradient_checkpointing_enable(self, enable: bool = True):
        self.model.gradient_checkpointing = enable

    def forward(self, input_ids, labels=None):
        logits = self.lm_head(self.model(input_ids))  # (B, T, V) in the compute dtype
        if labels is None:
            return logits
        return causal_lm_loss(logits, labels)


def causal_lm_loss(logits, labels, ignore_index=-100):
    """HF ``ForCausalLMLoss``: fp32 upcast of the logits, labels shifted by padding."""
    logits = logits.float()
    labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].contiguous()
    V = logits.shape[-1]
    return F.cross_entropy(logits.view(-1, V), labels.view(-1), ignore_index=ignore_index)


_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
           "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}") from None


_REQUIRED = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")


def build_model(profile, *, dtype=torch.bfloat16, device="cpu", checkpointing=False,
                attn_implementation="sdpa") -> LlamaForCausalLM:
    """Build the bundled decoder from a model profile (or a profile name).

    ``profile`` is a ``memplan.profiles`` model profile, a name for
    ``memplan.profiles.load_model``, or any object with the HF config.json fields.
    Under an active ``FakeTensorMode`` every tensor is fake, so a 13B model is
    built in seconds without allocating it. Weights are randomly initialized.
    """
    if isinstance(profile, str):
        from memplan.profiles import load_model
        profile = load_model(profile)
    missing = [k for k in _REQUIRED if getattr(profile, k, None) is None]
    if missing:
        raise ValueError(f"Model profile {getattr(profile, 'name', profile)!r} lacks {missing}")
    cfg = _Config(profile)
    model = LlamaForCausalLM(cfg, dtype=resolve_dtype(dtype), device=device,
                             attn_implementation=attn_implementation)
    model.gradient_checkpointing_enable(checkpointing)
    return model


class _Config:
    """The profile's fields with LLaMA defaults for the optional ones."""

    def __init__(self, p):
        for k in _REQUIRED:
            setattr(self, k, int(getattr(p, k)))
        self.num_key_value_heads = int(getattr(p, "num_key_value_heads", None) or self.num_attention_heads)
        self.head_dim = getattr(p, "head_dim", None) or self.hidden_size // self.num_attention_heads
        self.rms_norm_eps = float(getattr(p, "rms_norm_eps", None) or 1e-6)
        self.rope_theta = float(getattr(p, "rope_theta", None) or 10000.0)
        self.tie_word_embeddings = bool(getattr(p, "tie_word_embeddings", False))
        self.max_position_embeddings = int(getattr(p, "max_position_embeddings", None) or 2048)
        self.name = getattr(p, "name", "custom")
