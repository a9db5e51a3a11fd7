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
    block: int  # bytes one block saves for backward
    block_input: int  # bytes of one block's input (what checkpointing keeps per block)
    outside: int  # saved outside the blocks: embedding ids, final norm, head input
    logits: int  # the logits tensor (alive from the head to the end of backward)
    loss_saved: int  # what the loss saves for backward (fp32 log-softmax output)
    loss_fwd_transient: int  # alive only while the loss is computed (fp32 upcast of the logits)
    loss_bwd_transient: int  # gradients of the loss w.r.t. the logits, during the head's backward
    n_blocks: int

    def saved(self, checkpointing: bool) -> int:
        """Everything saved for backward at the end of the forward pass."""
        per_block = self.block_input if checkpointing else self.block
        return self.n_blocks * per_block + self.outside + self.logits + self.loss_saved


def _norm_saved(t: int, h: int, c: int, x: int, rms: bool) -> int:
    if rms:
        # RMSNorm with fp32 upcast: the fp32 input (4th; it is the input itself when x == 4),
        # rsqrt of the variance (4t), the normalized value cast back to compute dtype (c*th,
        # saved by the weight multiply). Its output (c*th) is counted by the linear that reads it.
        return 4 * t * h + 4 * t + c * t * h
    # LayerNorm: input (c*th), mean and rstd (2 x 4t)
    return c * t * h + 8 * t


def _llama_block(p: ModelProfile, t: int, c: int, x: int, rank_extra: int) -> int:
    h, kv, i, nh = p.hidden_size, p.kv_dim, p.intermediate_size, p.num_attention_heads
    norms = 2 * (_norm_saved(t, h, c, x, rms=True) + c * t * h)  # two norms + their outputs (read by q/k/v, gate/up)
    attn = (
        c * t * h  # q after RoPE (saved by SDPA)
        + 2 * c * t * kv  # k after RoPE and v (saved by SDPA; GQA keeps kv heads only)
        + c * t * h  # SDPA output
        + 4 * t * nh  # SDPA logsumexp, fp32, one per head and token (flash / memory-efficient kernels)
        + c * t * h  # o_proj input: the attention output transposed to (b, s, h), a contiguous copy
    )
    mlp = 4 * c * t * i  # gate out (saved by SiLU), SiLU out and up out (saved by the product), product (down_proj input)
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
    rms = p.family == "llama"
    outside = (
        8 * t  # int64 token ids saved by the embedding
        + _norm_saved(t, h, c, x, rms) + c * t * h  # final norm and its output, the head's input
    )
    logits = c * t * V
    if c == 4:  # fp32: no upcast for the loss
        fwd_transient = 0
    else:
        fwd_transient = 4 * t * V  # logits.float() for the cross-entropy, freed once log_softmax has run
    loss_saved = 4 * t * V  # log_softmax output (fp32)
    # backward of the loss: grad of the log-softmax output and of its input (fp32), then the
    # compute-dtype gradient of the logits that the head's backward reads
    bwd_transient = 2 * 4 * t * V + (c * t * V if c != 4 else 0)
    return Activations(block, x * t * h, outside, logits, loss_saved, fwd_transient, bwd_transient,
                       p.num_hidden_layers)
