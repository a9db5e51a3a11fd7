"""--loss fused-chunked: the LM head and the cross-entropy fused, the logits never materialized.

Modelled on Liger-Kernel 0.8.5 `LigerFusedLinearCrossEntropyLoss`
(`liger_kernel/ops/fused_linear_cross_entropy.py`, `fused_linear_cross_entropy_forward`): the
tokens are processed in chunks of `chunk_size` rows; each chunk's logits (chunk x V, compute
dtype) are computed into one reused buffer, the Triton cross-entropy kernel overwrites them in
place with their gradient, and that gradient is multiplied at once into the input's gradient
(t x h, allocated whole up front) and accumulated into the head weight's gradient (V x h, in the
weight's dtype). The loss's backward only returns those two. So, compared with the standard
loss (memplan/activations.py: logits t x V, their fp32 upcast, the fp32 log-softmax saved, the
logits' gradient), what is alive is:

- while the loss runs: one logits chunk, the per-token fp32 losses and the mask of valid
  tokens, the head weight's gradient being accumulated (when the head is trained), and both the
  head's input and the input's gradient;
- held for backward: the input's gradient (t x h) in place of the head's input (t x h) that the
  standard head saves, and no int64 copy of the shifted labels;
- in backward: no logits gradient; the head weight's gradient becomes the parameter's gradient,
  and the final norm's input gradient (t x h) is made while the input's gradient is still held.

Liger needs Triton and CUDA: the numbers are checked against a faithful pure-PyTorch
re-implementation of the same chunked algorithm (memplan/models/fused_loss.py).
"""
from __future__ import annotations

from dataclasses import replace

LOSSES = ("standard", "fused-chunked")
CHUNK_MEM_CONST = 1  # Liger's _CHUNK_MEM_CONST: logits chunk bounded by C x t x h


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 1 else 1


def liger_chunk_size(tokens: int, hidden: int, vocab: int) -> int:
    """Liger's chunk size: tokens / ceil(V / (C h)), rounded up to a power of two, at most `tokens`."""
    inc_factor = -(-vocab // (CHUNK_MEM_CONST * hidden))
    return min(_next_pow2(-(-tokens // inc_factor)), tokens)


def fused_chunked(acts, tokens: int, hidden: int, vocab: int, compute_bytes: int, head_grad_bytes: int,
                  chunk: int | None = None, frozen_outside: bool = False):
    """The activation terms with the fused linear cross-entropy in place of head + loss.

    `head_grad_bytes`: the head weight's gradient accumulated in the forward (0 when frozen).
    `chunk`: rows per chunk (None: Liger's default for this shape). `frozen_outside`: head and norms
    frozen (adapters): the input's gradient is held all the same, where a frozen head saves no input.
    """
    chunk = min(chunk or liger_chunk_size(tokens, hidden, vocab), tokens)
    # one logits chunk, the fp32 per-token losses, the valid-token mask, the head weight's gradient, and the
    # head's input (t x h), alive until the loss returns while `outside` already holds the input's gradient
    during = chunk * vocab * compute_bytes + 4 * tokens + tokens + head_grad_bytes + compute_bytes * tokens * hidden
    held = compute_bytes * tokens * hidden if frozen_outside else 0  # grad_input, beyond what `outside` keeps
    # the targets are not saved for backward (the standard loss keeps an int64 copy of the shifted labels)
    return replace(acts, logits=0, loss_saved=0, grad_logits=0, loss_fwd_transient=during, head_released=0,
                   outside=acts.outside - 8 * tokens + held)
