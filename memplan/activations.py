"""Activation memory: what the forward pass saves for backward, term by term.

Derived from the tensors the bundled LLaMA implementation (memplan/models/) and the
Hugging Face one save (SDPA attention, fp32 RMSNorm upcasts, SwiGLU), not from a
textbook constant. Notation: t = batch x seq tokens, h hidden, kv = key/value width
(GQA), i MLP width, nh heads, V vocabulary; `c` bytes per compute element (2 in
bf16 / mixed, 4 in fp32), `x` bytes per residual-stream element (the parameter
dtype: bf16 in `bf16`, fp32 in `mixed` / `fp32`).

Owned jointly with the measurement (memplan/measure/): every term here must be
checkable against a tracked tensor there.
"""
from __future__ import annotations

from dataclasses import dataclass

from memplan.profiles import ModelProfile


@dataclass(frozen=True)
class Activations:
    """Activation terms of one micro-batch, in bytes (checked against memplan/measure/)."""

    block: int  # bytes one block saves for backward (everything trainable)
    block_input: int  # bytes of one block's input (what checkpointing keeps per block)
    outside: int  # saved outside the blocks: final norm, RoPE cos/sin, shifted labels, loss scalars
    inputs: int  # the batch the training loop holds: input_ids and labels (int64)
    logits: int  # the head's output (compute dtype): freed when the forward returns the loss
    loss_saved: int  # what the loss saves for backward (fp32 log-softmax output)
    loss_fwd_transient: int  # alive only while the loss is computed: the logits and their fp32 upcast
    grad_logits: int  # the loss gradient w.r.t. the logits in the compute dtype (the head's backward reads it)
    head_input_grad: int  # gradient of the head's input (t x h, compute dtype)
    frozen_norm_saving: int  # what one norm + its consumers stop saving when weights are frozen (adapters)
    first_norm_input: int  # the first block's norm saves its fp32 input only if the input needs a gradient
    n_blocks: int

    def saved(self, checkpointing: bool, frozen_outside: bool = False) -> int:
        """Everything held for backward at the end of the forward pass.

        ``frozen_outside``: embeddings, norms and head frozen (LoRA fine-tuning):
        the norms keep no normalized copy, the head keeps no input, and the first
        norm keeps nothing (its input needs no gradient).
        """
        per_block = self.block_input if checkpointing else self.block
        total = self.n_blocks * per_block + self.outside + self.inputs + self.loss_saved
        if frozen_outside:
            blocks_norms = 0 if checkpointing else 2 * self.n_blocks
            total -= (blocks_norms + 1) * self.frozen_norm_saving + self.head_input_saving
            if not checkpointing:
                total -= self.first_norm_input
        return total

    @property
    def head_input_saving(self) -> int:
        return self.head_input_grad  # the final norm's output (t x h), saved by a trainable head only


def _norm_saved(t: int, h: int, c: int, x: int, rms: bool) -> int:
    if rms:
        # RMSNorm with fp32 upcast (LlamaRMSNorm): the fp32 input (4th: the upcast copy, or the
        # fp32 input itself when the stream is fp32), saved by pow and by the multiply; rsqrt of
        # the variance (4t); the normalized value cast back to compute dtype (c*th, saved by the
        # weight multiply when the weight is trainable). The output (c*th) is counted by the
        # linears that read it.
        return 4 * t * h + 4 * t + c * t * h
    # LayerNorm: input (c*th), mean and rstd (2 x 4t)
    return c * t * h + 8 * t


def _llama_block(p: ModelProfile, t: int, c: int, x: int, rank_extra: int) -> int:
    h, kv, i, nh = p.hidden_size, p.kv_dim, p.intermediate_size, p.num_attention_heads
    # two norms + their outputs read by q/k/v and by gate/up (one tensor each when x == c)
    norms = 2 * (_norm_saved(t, h, c, x, rms=True) + c * t * h)
    if x != c:
        # mixed precision: the normalized value stays fp32 (x bytes), and autocast casts the
        # fp32 norm output to bf16 once per consuming linear: 3 copies (q, k, v) + 2 (gate, up)
        norms += 2 * (x - c) * t * h + 3 * c * t * h
    attn = (
        c * t * h  # q after RoPE (saved by SDPA)
        + 2 * c * t * kv  # k after RoPE and v (saved by SDPA; GQA keeps kv heads only)
        + c * t * h  # SDPA output, (b, s, nh, hs) in memory: o_proj reads it as a view, no copy
        + 4 * t * nh  # SDPA logsumexp, fp32, one per head and token (flash / memory-efficient kernels)
    )
    mlp = 4 * c * t * i  # gate out (saved by SiLU), SiLU out and up out (saved by the product), product (down_proj input)
    if x != c:  # autocast's bf16 copies of the block's linear weights, saved by the matmuls
        mlp += c * (2 * h * h + 2 * h * kv + 3 * h * i)
    return norms + attn + mlp + rank_extra


def _bert_block(p: ModelProfile, t: int, c: int, x: int, rank_extra: int) -> int:
    h, i, nh = p.hidden_size, p.intermediate_size, p.num_attention_heads
    attn = 3 * c * t * h + c * t * h + 4 * t * nh + c * t * h  # q, k, v; SDPA out + logsumexp; dense input
    drop = 2 * t * h  # two dropout masks (bool, one byte per element)
    norms = 2 * _norm_saved(t, h, c, x, rms=False) + c * t * h  # post-LN x2; first LN output read by the MLP
    mlp = 2 * c * t * i  # GELU input, GELU output (the second dense's input)
    return attn + drop + norms + mlp + rank_extra


def _opt_block(p: ModelProfile, t: int, c: int, x: int, rank_extra: int) -> int:
    h, i, nh = p.hidden_size, p.intermediate_size, p.num_attention_heads
    norms = 2 * (_norm_saved(t, h, c, x, rms=False) + c * t * h)  # pre-LN x2 and their outputs
    attn = 2 * c * t * h + c * t * h + 4 * t * nh + c * t * h  # q, k, v (k, v as wide as q), out, lse, out_proj input
    mlp = c * t * i  # ReLU output (saved by ReLU and read by fc2)
    drop = 2 * t * h  # dropout masks
    return norms + attn + mlp + drop + rank_extra


_BLOCKS = {"llama": _llama_block, "bert": _bert_block, "opt": _opt_block, "gpt2": _opt_block}


def activations(p: ModelProfile, batch: int, seq: int, c: int, x: int, adapter_rank: int,
                adapters_per_block: int) -> Activations:
    """Activation terms for one micro-batch of `batch` x `seq` tokens."""
    t = batch * seq
    h, V = p.hidden_size, p.vocab_size
    # LoRA / low-rank: each adapted linear saves A x (t x r) for B's backward
    rank_extra = adapters_per_block * c * t * adapter_rank
    block = _BLOCKS[p.family](p, t, c, x, rank_extra)
    if p.num_local_experts:  # a mixture of experts replaces the dense MLP: memplan/moe.py
        from memplan.moe import moe_block_delta

        block += moe_block_delta(p, t, c)
    rms = p.family == "llama"
    outside = (
        _norm_saved(t, h, c, x, rms) + c * t * h  # final norm and its output, the head's input
        + 8 * t  # the shifted labels (int64 copy) saved by the loss
        + 8  # the loss and the loss's total weight (fp32 scalars)
    )
    if p.family == "llama":
        # RoPE cos and sin (1, seq, hs), shared by all blocks, in the residual stream's dtype
        outside += 2 * x * seq * p.head_dim
        if x != c:  # mixed: the final normalized value stays fp32; autocast's bf16 copy of the head weight
            outside += (x - c) * t * h + c * V * h
    inputs = 2 * 8 * t  # input_ids and labels (int64), held by the training loop
    logits = c * t * V
    # while the loss runs: the logits and, in bf16 / mixed, their fp32 upcast (log_softmax's output is saved)
    fwd_transient = logits + (4 * t * V if c != 4 else 0)
    loss_saved = 4 * t * V  # log_softmax output (fp32)
    first_norm = 4 * t * h + 4 * t if rms else 0
    frozen_norm = c * t * h if rms else 0
    return Activations(block, x * t * h, outside, inputs, logits, loss_saved, fwd_transient, logits,
                       c * t * h, frozen_norm, first_norm, p.num_hidden_layers)
