"""Activation memory: what the forward pass saves for backward, term by term.

Derived from the tensors the bundled LLaMA implementation (memplan/models/) and the
Hugging Face classes save (transformers 5.24, torch 2.13: LlamaForCausalLM /
MistralForCausalLM, GPT2LMHeadModel, OPTForCausalLM, BertForMaskedLM /
RobertaForMaskedLM; SDPA or eager attention, dropout, each class's loss), not from a
textbook constant; one function per family below, each checked by
``memplan validate`` against the class it names. Notation: t = batch x seq tokens, h hidden, kv = key/value width
(GQA), i MLP width, nh heads, V vocabulary; `c` bytes per compute element (2 in
bf16 / mixed, 4 in fp32), `x` bytes per residual-stream element (the parameter
dtype: bf16 in `bf16`, fp32 in `mixed` / `fp32`).

Owned jointly with the measurement (memplan/measure/): every term here must be
checkable against a tracked tensor there.
"""
from __future__ import annotations

from dataclasses import dataclass

from memplan.profiles import ModelProfile
from memplan.records import cached_hash


@dataclass(frozen=True, slots=True)
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
    head_released: int = 0  # what the head's backward frees: its saved input (and head_weight_copy)
    head_weight_copy: int = 0  # mixed: autocast's bf16 copy of the head weight, saved by its matmul
    token_bytes: int = 0  # one compute-dtype value per token (c x t): a width-w activation is w x token_bytes
    block_backward: int = 0  # what a block's backward holds beyond its saved tensors and incoming gradient
    frozen_qk_norm_saving: int = 0  # Qwen3: what a block's q and k norms stop saving when their weights are frozen

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
                total -= self.n_blocks * self.frozen_qk_norm_saving
            if not checkpointing:
                total -= self.first_norm_input
        return total

    @property
    def head_input_saving(self) -> int:
        return self.head_input_grad  # the final norm's output (t x h), saved by a trainable head only


@cached_hash
@dataclass(frozen=True)
class Knobs:
    """Model settings that change what is saved (TrainingConfig's attn, dropouts and kernels).

    ``cuda``: the CUDA kernels' saved tensors (what the estimate is for). False models the
    CPU kernels, which validation on CPU or fake tensors measures; they differ in three
    places, each noted where it applies: dropout masks (CUDA ``native_dropout``: a bool
    mask, 1 byte; CPU: a noise tensor in the input's dtype), LayerNorm statistics (CUDA:
    fp32 mean and rstd for a bf16 input; CPU: the input's dtype) and SDPA with attention
    dropout (CUDA flash / memory-efficient kernels draw the dropout in-kernel and save
    nothing more; the CPU takes the math path in fp32, saving the s^2 matrices).
    """

    attn: str = "sdpa"  # sdpa | eager
    attn_dropout: bool = False  # dropout on the attention probabilities is on (p > 0)
    hidden_dropout: bool = False  # dropout on the residual branches / embeddings is on
    lora_dropout: bool = False  # peft's lora_dropout on each adapted linear's input is on
    adapter_bytes: int = 0  # the adapters' own dtype (peft: 4, fp32 under a bf16 model); 0: the compute dtype
    frozen_other: bool = True  # adapter methods: the linears that are not adapted are frozen
    base_weights: bool = True  # the adapted linears keep their frozen base weight (LoRA); False: the factors replace it
    cuda: bool = True

    def mask(self, c: int) -> int:
        """Bytes per element of a dropout mask."""
        return 1 if self.cuda else c

    def ln_stats(self, t: int, c: int) -> int:
        """LayerNorm's saved mean and rstd (one each per token)."""
        return 2 * (4 if self.cuda else c) * t


def _norm_saved(t: int, h: int, c: int, x: int, rms: bool, k: Knobs = Knobs()) -> int:
    if rms:
        # RMSNorm with fp32 upcast (LlamaRMSNorm): the fp32 input (4th: the upcast copy, or the
        # fp32 input itself when the stream is fp32), saved by pow and by the multiply; rsqrt of
        # the variance (4t); the normalized value cast back to compute dtype (c*th, saved by the
        # weight multiply when the weight is trainable). The output (c*th) is counted by the
        # linears that read it.
        return 4 * t * h + 4 * t + c * t * h
    # LayerNorm: input (c*th), mean and rstd
    return c * t * h + k.ln_stats(t, c)


# ---------------------------------------------------------------- attention (all families)
# What one attention layer saves from q/k/v (after their projections) to the attention output
# (the output projection's input), by implementation. `softmax_fp32`: the class computes the
# softmax in fp32 and casts it back (LLaMA, Mistral, OPT); GPT-2 and BERT/RoBERTa do not.
def _attention(t: int, b: int, s: int, nh: int, qd: int, kv: int, c: int, k: Knobs, softmax_fp32: bool) -> int:
    s2 = b * nh * s * s  # elements of one (b, heads, s, s) score matrix
    if k.attn == "eager":
        # matmul(q, k^T) and matmul(p, v) save contiguous copies of q, k^T and v (k, v repeated
        # to every head under GQA: repeat_kv), and transpose(1, 2).contiguous() copies the output
        qkvo = 4 * c * t * qd
        if softmax_fp32:
            probs = 4 + (c if c != 4 else 0)  # the fp32 softmax (its backward) and the cast copy (matmul)
        else:
            probs = c  # the softmax output, saved by its backward and by matmul
        if k.attn_dropout:  # the cast copy is dropout's input (not saved); its output goes to matmul
            probs = (4 if softmax_fp32 else c) + k.mask(c) + c
        return qkvo + probs * s2
    if k.attn_dropout and not k.cuda:
        # CPU SDPA with dropout takes the math path in fp32: k^T scaled, q and v in fp32 (at every
        # head), the softmax, the dropout noise and its output (fp32 s^2 each), the output cast back
        return 3 * 4 * t * qd + 3 * 4 * s2 + c * t * qd
    # SDPA flash / memory-efficient kernels: q, k, v (GQA: kv heads only), the output in
    # (b, s, heads, hd) memory (the output projection reads it as a view) and the logsumexp (fp32,
    # one per head and token). Attention dropout is drawn in the kernel: nothing more is saved.
    return c * t * (qd + 2 * kv) + c * t * qd + 4 * t * nh


def _act_saved(act: str, t: int, i: int, c: int) -> int:
    """What an MLP's activation saves, the up projection's output included (t x i elements each)."""
    if act == "gelu_new":
        # transformers' NewGELUActivation, 0.5 x (1 + tanh(k (x + 0.044715 x^3))), is a chain of
        # small ops: x (pow), tanh (its output), 1 + tanh and 0.5 x (the product's operands), the product
        return 5 * c * t * i
    if act == "relu":
        return c * t * i  # ReLU saves its output, which the down projection reads
    return 2 * c * t * i  # gelu / gelu_pytorch_tanh / others: input (the activation's backward) and output


# ---------------------------------------------------------------- per family blocks
def _llama_block(p: ModelProfile, t: int, b: int, s: int, c: int, x: int, k: Knobs) -> int:
    """transformers 5.x LlamaDecoderLayer / MistralDecoderLayer (RMSNorm fp32 upcasts, SwiGLU)."""
    h, kv, i, nh, qd = p.hidden_size, p.kv_dim, p.intermediate_size, p.num_attention_heads, p.q_dim
    # two norms + their outputs read by q/k/v and by gate/up (one tensor each when x == c)
    norms = 2 * (_norm_saved(t, h, c, x, rms=True) + c * t * h)
    if x != c:
        # mixed precision: the normalized value stays fp32 (x bytes), and autocast casts the
        # fp32 norm output to bf16 once per consuming linear: 3 copies (q, k, v) + 2 (gate, up)
        norms += 2 * (x - c) * t * h + 3 * c * t * h
    attn = _attention(t, b, s, nh, qd, kv, c, k, softmax_fp32=True)
    if p.qk_norm:  # Qwen3: q_norm, k_norm (RMSNorm over each head) on q_proj's and k_proj's compute-dtype
        # output: its fp32 upcast (4 B), rsqrt per head and token (4 B), the normalized value cast back
        # (c, saved by the weight multiply); RoPE saves only cos and sin, SDPA the rotated q and k as before
        attn += (4 + c) * t * (qd + kv) + 4 * t * (nh + p.num_key_value_heads)
    mlp = 4 * c * t * i  # gate out (saved by SiLU), SiLU out and up out (saved by the product), product (down_proj input)
    if x != c:  # autocast's bf16 copies of the block's linear weights, saved by the matmuls
        mlp += c * (2 * h * qd + 2 * h * kv + 3 * h * i)
    return norms + attn + mlp


def _gpt2_block(p: ModelProfile, t: int, b: int, s: int, c: int, x: int, k: Knobs) -> int:
    """transformers 5.x GPT2Block (pre-LN; c_attn's output holds q, k, v) and OPTDecoderLayer
    (pre-LN; q scaled by a multiply, k, v from their projections): the same bytes."""
    h, i, nh = p.hidden_size, p.intermediate_size, p.num_attention_heads
    norms = 2 * (_norm_saved(t, h, c, x, rms=False, k=k) + c * t * h)  # ln_1, ln_2: input, stats, output
    attn = _attention(t, b, s, nh, h, h, c, k, softmax_fp32=p.family == "opt")
    mlp = _act_saved(p.hidden_act, t, i, c)
    drop = 2 * k.mask(c) * t * h if k.hidden_dropout else 0  # after the attention and after the MLP
    return norms + attn + mlp + drop


def _bert_block(p: ModelProfile, t: int, b: int, s: int, c: int, x: int, k: Knobs) -> int:
    """transformers 5.x BertLayer / RobertaLayer (post-LN). The block's input is the previous
    LayerNorm's output (counted there, or by the embeddings for the first block)."""
    h, i, nh = p.hidden_size, p.intermediate_size, p.num_attention_heads
    attn = _attention(t, b, s, nh, h, h, c, k, softmax_fp32=False)
    # two residual sums (each LayerNorm's input), the LayerNorms' stats and outputs (the MLP's input;
    # the next block's input)
    norms = 2 * (2 * c * t * h + k.ln_stats(t, c))
    mlp = _act_saved(p.hidden_act, t, i, c)
    drop = 2 * k.mask(c) * t * h if k.hidden_dropout else 0
    return attn + norms + mlp + drop


# Each adapted linear's input, by family: (the module path ending, the tensor it reads and that
# tensor's width: "h" hidden, "q" heads x head_dim, "i" MLP). The attention output is also saved by
# SDPA's flash / memory-efficient kernels (not by eager attention's output copy, nor by the CPU's
# math path), and ReLU saves its own output (OPT's fc2 input).
_LINEAR_INPUTS = {
    "llama": (("q_proj", "attn_in", "h"), ("k_proj", "attn_in", "h"), ("v_proj", "attn_in", "h"),
              ("o_proj", "attn_out", "q"), ("gate_proj", "mlp_in", "h"), ("up_proj", "mlp_in", "h"),
              ("down_proj", "mlp_mid", "i")),
    "gpt2": (("attn.c_attn", "attn_in", "h"), ("attn.c_proj", "attn_out", "q"), ("mlp.c_fc", "mlp_in", "h"),
             ("mlp.c_proj", "mlp_mid", "i")),
    "opt": (("q_proj", "attn_in", "h"), ("k_proj", "attn_in", "h"), ("v_proj", "attn_in", "h"),
            ("out_proj", "attn_out", "q"), ("fc1", "mlp_in", "h"), ("fc2", "mlp_mid", None)),
    "bert": (("query", "attn_in", "h"), ("key", "attn_in", "h"), ("value", "attn_in", "h"),
             ("attention.output.dense", "attn_out", "q"), ("intermediate.dense", "mlp_in", "h"),
             ("output.dense", "mlp_mid", "i")),
}


def _input_of(family: str, name: str):
    for suffix, tensor, width in _LINEAR_INPUTS[family]:
        if name.endswith("." + suffix) or name == suffix:
            return tensor, width
    return None, None


def _adapters(p: ModelProfile, t: int, c: int, k: Knobs, rank: int, adapted: tuple[tuple[str, int, int], ...],
              x: int | None = None) -> int:
    """What the LoRA / low-rank adapters of one block change (``adapted``: each adapted linear's
    module path, input width and output width). A x (t x r) is saved for B's backward, in the adapters' dtype.

    peft 0.21 (LoRA ``Linear.forward``: ``lora_B(lora_A(dropout(x.to(A.dtype))))``) gives lora_A its
    own input when the adapters' dtype differs from the model's (fp32 adapters under bf16: an fp32
    copy per adapted linear) or with lora_dropout (the dropout's output and mask). The frozen base
    linear saves nothing then, so a model tensor read only by adapted (or frozen) linears is no longer
    saved: the norm outputs read by q/k/v and by gate/up, and the down projection's input.
    """
    if not adapted:
        return 0
    if x is not None and x != c and p.family == "llama":
        return _adapters_autocast(p, t, c, k, rank, adapted)
    a = k.adapter_bytes or c
    total = len(adapted) * a * t * rank
    own_input = a != c or k.lora_dropout
    if not own_input:
        return total  # lora_A shares the linear's input (saved by the block already)
    for _, n, _m in adapted:
        total += a * t * n  # the cast copy, or the dropout's output
        if k.lora_dropout:
            total += k.mask(a) * t * n
    adapted_names = {name for name, _, _ in adapted}
    widths = {"h": p.hidden_size, "q": p.q_dim, "i": p.intermediate_size}
    kernel_keeps_output = k.attn == "sdpa" and not (k.attn_dropout and not k.cuda)
    released = set()
    for suffix, tensor, width in _LINEAR_INPUTS[p.family]:
        if tensor in released or (tensor == "mlp_mid" and p.hidden_act == "relu") or \
                (tensor == "attn_out" and kernel_keeps_output):
            continue
        readers = [s for s, tn, _ in _LINEAR_INPUTS[p.family] if tn == tensor]
        if all(any(_input_of(p.family, n)[0] == tensor and n.endswith(r) for n in adapted_names) or k.frozen_other
               for r in readers):
            released.add(tensor)
            total -= c * t * widths[width]
    return total


def _adapters_autocast(p: ModelProfile, t: int, c: int, k: Knobs, rank: int,
                       adapted: tuple[tuple[str, int, int], ...]) -> int:
    """The adapters under autocast (``--precision mixed``: fp32 weights and residual stream, bf16
    matmuls; measured on transformers' LlamaForCausalLM with peft 0.21 and the bundled LoRA, torch 2.13).

    Each adapter matmul runs in the compute dtype whatever the adapters' dtype: A's output (t x r)
    and autocast's copies of A and B (r x n, m x r) are saved in it. A's input is saved as one
    autocast copy per adapted linear when it is an fp32 norm output, when peft first casts it to
    the adapters' fp32 (the attention output, the MLP product) or when lora_dropout makes a new
    tensor of it (its mask is saved beside); otherwise (the bundled LoRA on a bf16 input) it is
    the input itself. The frozen base linears save no input, so the block's copies of the norm
    outputs (one per reading linear, see ``_llama_block``) are not saved for a reader that is
    adapted or frozen, nor a bf16 input that only adapted linears with their own copy (or frozen
    ones) read.
    """
    names = [name for name, _, _ in adapted]
    casts = bool(k.adapter_bytes)  # peft casts A's input to the adapters' dtype
    own_bf16 = casts or k.lora_dropout  # an input already in the compute dtype gets its own copy
    total = 0
    for name, n, m in adapted:
        total += c * t * rank + c * rank * (n + m)
        fp32_input = _input_of(p.family, name)[0] in ("attn_in", "mlp_in")
        if fp32_input or own_bf16:
            total += c * t * n
        if k.lora_dropout:  # the dropout runs on the fp32 input (peft's cast) or the input as it is
            total += k.mask(4 if fp32_input or casts else c) * t * n
    if not k.base_weights:  # lowrank: no base weight, so none of the block's bf16 weight copies
        total -= sum(c * n * m for _, n, m in adapted)
    widths = {"h": p.hidden_size, "q": p.q_dim, "i": p.intermediate_size}
    kernel_keeps_output = k.attn == "sdpa" and not (k.attn_dropout and not k.cuda)
    for suffix, tensor, width in _LINEAR_INPUTS[p.family]:
        if tensor in ("attn_in", "mlp_in") and (any(n.endswith(suffix) for n in names) or k.frozen_other):
            total -= c * t * widths[width]  # this reader's autocast copy of the norm output
    for tensor, width in (("mlp_mid", "i"), ("attn_out", "q")):
        if not own_bf16 or (tensor == "mlp_mid" and p.hidden_act == "relu") or \
                (tensor == "attn_out" and kernel_keeps_output):
            continue
        readers = [s for s, tn, _ in _LINEAR_INPUTS[p.family] if tn == tensor]
        if all(any(n.endswith(r) for n in names) or k.frozen_other for r in readers):
            total -= c * t * widths[width]
    return total


def _frozen_embeddings(p: ModelProfile, t: int, seq: int, c: int, k: Knobs) -> int:
    """What is not saved when the embeddings (and norms) are frozen: nothing before the first block
    needs a gradient, so the first norm saves nothing (LLaMA: its fp32 input and rsqrt; LayerNorm:
    its input and stats), the position / token-type ids are not kept by their frozen embeddings, and
    the embedding dropout keeps no mask. BERT / RoBERTa: everything the embeddings keep."""
    h = p.hidden_size
    if p.family == "llama":
        return 4 * t * h + 4 * t
    mask = k.mask(c) * t * h if k.hidden_dropout else 0
    if p.family == "bert":
        ids = 16 * t if p.model_type != "bert" else 8 * t
        return ids + 2 * c * t * h + k.ln_stats(t, c) + mask
    ids = 8 * seq if p.family == "gpt2" else 8 * t
    return c * t * h + k.ln_stats(t, c) + ids + (mask if p.family == "gpt2" else 0)


def _first_block_masks(p: ModelProfile, t: int, k: Knobs, adapted: tuple[tuple[str, int, int], ...]) -> int:
    """With frozen embeddings and norms the first block's attention input needs no gradient, so the
    lora_dropout of the linears reading it saves no mask there (peft)."""
    if not adapted or not k.lora_dropout:
        return 0
    a = k.adapter_bytes or 2
    return sum(k.mask(a) * t * n for name, n, _m in adapted if _input_of(p.family, name)[0] == "attn_in")


_BLOCKS = {"llama": _llama_block, "bert": _bert_block, "opt": _gpt2_block, "gpt2": _gpt2_block}


def _outside(p: ModelProfile, t: int, seq: int, c: int, x: int, k: Knobs) -> int:
    """Saved outside the blocks: embeddings' indices and sums, the final norm, the head's input,
    the loss's labels and scalars."""
    h = p.hidden_size
    if p.family == "bert":
        # token-type ids (a gather from the buffer) and, for RoBERTa, position ids computed from the
        # input ids (int64 each, saved by their embeddings); BERT's positions are a view of a buffer
        ids = 16 * t if p.model_type != "bert" else 8 * t
        # the embeddings' sum (the LayerNorm's input), its stats and output (the first block's input),
        # the embedding dropout's mask
        emb = 2 * c * t * h + k.ln_stats(t, c) + (k.mask(c) * t * h if k.hidden_dropout else 0)
        # masked-LM head: dense output (GELU's input), GELU output (LayerNorm's input), LayerNorm
        # stats and output (the decoder's input); the loss and its total weight in bf16 (no upcast)
        head = 3 * c * t * h + k.ln_stats(t, c)
        return ids + emb + head + 2 * min(c, 4)
    final = (
        _norm_saved(t, h, c, x, p.family == "llama", k) + c * t * h  # final norm and its output, the head's input
        + 8 * t  # the shifted labels (int64 copy) saved by the loss
        + 8  # the loss and the loss's total weight (fp32 scalars)
    )
    if p.family == "llama":
        # RoPE cos and sin (1, seq, hs), shared by all blocks, in the residual stream's dtype
        final += 2 * x * seq * p.head_dim
        if x != c:  # mixed: the final normalized value stays fp32; autocast's bf16 copy of the head weight
            final += (x - c) * t * h + c * p.vocab_size * h
    elif p.family == "gpt2":
        final += 8 * seq  # position ids (arange, int64), saved by wpe
        if k.hidden_dropout:
            final += k.mask(c) * t * h  # embd_pdrop's mask (its output is ln_1's input, counted there)
    else:  # opt
        final += 8 * t  # position ids (a cumsum of the attention mask, int64), saved by embed_positions
    return final


def _block_backward(p: ModelProfile, t: int, c: int) -> int:
    """The most a block's backward holds at once beyond the tensors the block saved and the gradient
    flowing in: its MLP's. SwiGLU (LLaMA): once the down projection's backward has freed its input,
    the gradients of that input, of the activation's output and of the up projection (t x i each)
    are alive together: two more than the one freed. GELU MLPs (GPT-2, OPT, BERT): the gradient of
    the activation's output and of its input beside fc1's saved output, one more than the one freed."""
    i = p.intermediate_size
    return (2 if p.family == "llama" else 1) * c * t * i


def activations(p: ModelProfile, batch: int, seq: int, c: int, x: int, adapter_rank: int,
                adapter_inputs: tuple[tuple[str, int, int], ...] = (), knobs: Knobs = Knobs()) -> Activations:
    """Activation terms for one micro-batch of `batch` x `seq` tokens.

    ``adapter_inputs``: (module path, input width, output width) of each adapted linear of one block
    (LoRA / low-rank).
    """
    t = batch * seq
    h, V = p.hidden_size, p.vocab_size
    k = knobs
    block = _BLOCKS[p.family](p, t, batch, seq, c, x, k) + _adapters(p, t, c, k, adapter_rank, adapter_inputs, x)
    if p.num_local_experts:  # a mixture of experts replaces the dense MLP: memplan/moe.py
        from dataclasses import replace

        from memplan.moe import moe_block

        # the dense MLP's terms, as the rules above count them, are the part linear in the MLP width
        wider = replace(p, intermediate_size=p.intermediate_size + 1)
        per_unit = _BLOCKS[p.family](wider, t, batch, seq, c, x, k) \
            + _adapters(wider, t, c, k, adapter_rank, adapter_inputs, x) - block
        block += moe_block(p, t, c, frozen=bool(adapter_inputs) and k.frozen_other) \
            - per_unit * p.intermediate_size
    rms = p.family == "llama"
    outside = _outside(p, t, seq, c, x, k)
    inputs = 2 * 8 * t  # input_ids and labels (int64), held by the training loop
    logits = c * t * V
    if p.family == "bert":
        # BertForMaskedLM / RobertaForMaskedLM call CrossEntropyLoss on the compute-dtype scores: no
        # fp32 upcast; log_softmax's output (saved) and both gradients are in the compute dtype
        fwd_transient, loss_saved = logits, c * t * V
    else:
        # transformers' ForCausalLMLoss: logits.float(), then cross-entropy. While it runs: the
        # logits and, in bf16 / mixed, their fp32 upcast; log_softmax's fp32 output is saved
        fwd_transient, loss_saved = logits + (4 * t * V if c != 4 else 0), 4 * t * V
    first_norm = _frozen_embeddings(p, t, seq, c, k) + _first_block_masks(p, t, k, adapter_inputs)
    if rms and x != c:  # mixed: the first block's q, k, v (and their adapters' A) read an input that needs
        # no gradient, so autocast's bf16 copies of their weights are not saved
        first_norm += c * h * (p.q_dim + 2 * p.kv_dim)
        first_norm += sum(c * adapter_rank * n for name, n, _m in adapter_inputs
                          if _input_of(p.family, name)[0] == "attn_in")
    frozen_norm = x * t * h if rms else 0  # the normalized value a trainable norm weight multiplies
    # the head's matmul saves its input (and, under autocast, its weight's bf16 copy) until its backward
    # has run, before the per-layer update steps the head; BERT's head is a stack (not modelled so)
    copy = c * V * h if rms and x != c else 0
    head_released = 0 if p.family == "bert" else c * t * h + copy
    return Activations(block, x * t * h, outside, inputs, logits, loss_saved, fwd_transient, logits,
                       c * t * h, frozen_norm, first_norm, p.num_hidden_layers, head_released, copy, c * t,
                       _block_backward(p, t, c), c * t * (p.q_dim + p.kv_dim) if p.qk_norm else 0)
