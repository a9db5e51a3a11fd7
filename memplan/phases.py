"""Compose the phases of one training step from the per-category terms.

A step passes through phases and the peak is the largest, not the sum of the
categories (ALGORITHMS.md, "The peak is not a sum"). Each phase is the moment of
highest memory within it:

- forward: end of the forward pass, while the loss is computed. No gradients
  (zero_grad(set_to_none=True) freed the previous step's). Under autocast (mixed) with
  checkpointing, autocast's cache still holds the bf16 copy of every trainable weight the
  blocks cast, though the blocks saved nothing: freed when the forward returns.
- backward: the largest of its ends. At its start everything saved is alive, plus
  the gradients of the loss w.r.t. the logits and the head's gradient; then the blocks
  run backward, last to first, each freeing its activations as the next gradients are
  made: block by block, one grows as the other shrinks, so the largest block moment is
  the last block's or the first block's. Each is a block's backward peak, in its MLP
  (Activations.block_backward beyond what the block saved): in the last block with
  nearly every activation alive, in the first with every gradient but that block's and
  the embeddings'. At its end all gradients exist and the activations are gone. With
  checkpointing, each block's activations are recomputed on top of the kept block
  inputs before its backward. 4-bit base weights (QLoRA) are dequantized whole in
  their linear's backward. With the per-layer update, each
  gradient is consumed by its parameter's optimizer step as soon as it is complete:
  at most the largest one is alive (Estimate.gradient_peak_bytes), and that step's
  transients happen here; the head
  is stepped after its backward has freed what its matmul saved. Under autocast
  (mixed) the head's weight gradient is made in bf16 and then cast to the fp32 one.
- optimizer_step: all gradients, states and projectors, plus the transients of the
  step of the largest tensor (the bundled optimizers step one tensor at a time).
- refresh_step: the optimizer step of a step that refreshes the projection, plus the
  refresh transients (SVD / QR / merge) of the largest projected weight. With the
  per-layer update the refresh runs in backward, in a projected weight's step in the
  last block's backward (never the head's: it is not projected). Methods without a
  refresh report the optimizer step again.

Owned jointly with the measurement (memplan/measure/).
"""
from __future__ import annotations

from dataclasses import dataclass

from memplan.activations import Activations


@dataclass(frozen=True, slots=True)
class StepTerms:
    """What a step holds and allocates apart from the activations, in bytes."""

    parameters: int
    gradients: int  # all trainable gradients
    first_gradient: int  # the gradient produced first in backward (the head's)
    first_step_temp: int  # transients of the head's optimizer step (per-layer update)
    largest_gradient: int
    optimizer_states: int
    projectors: int
    step_temp: int  # transients of the largest tensor's optimizer step
    refresh_temp: int | None  # transients of one projection refresh; None without refresh
    layerwise: bool
    checkpointing: bool
    frozen_non_target: bool = False  # adapters trained alone: embeddings, norms and head frozen
    tied_gradient: int = 0  # a trainable embedding tied to the head: its gradient's bytes (0: none)
    dequant_weight: int = 0  # 4-bit base weights: the largest one dequantized for its input gradient (bytes)
    dequant_width: int = 0  # that linear's input width (its input gradient: width x token_bytes)
    unmade_at_first_block: int = 0  # gradient bytes not made yet at the first block's backward peak
    block_tail_gradient: int = 0  # gradient bytes a block's backward makes before its peak (its MLP's output linear)
    refresh_gradient: int = 0  # per-layer update: the gradient a refresh works on (the largest projected or adapter one)
    autocast_cache: int = 0  # mixed: the compute-dtype copies of the trainable block weights autocast caches in forward


def _phase(t: StepTerms, gradients: int, activations: int, temporaries: int) -> dict[str, int]:
    return {
        "parameters": t.parameters,
        "gradients": gradients,
        "optimizer_states": t.optimizer_states,
        "projectors": t.projectors,
        "activations": activations,
        "temporaries": temporaries,
    }



def compose(t: StepTerms, a: Activations) -> dict[str, dict[str, int]]:
    """{phase: {category: bytes}} of the step's four phases."""
    return phases_of(t, moments(t, a))


def phases_of(t: StepTerms, m: tuple) -> dict[str, dict[str, int]]:
    forward, backward, step, refresh = m
    return {"forward": _phase(t, *forward), "backward": _phase(t, *backward), "optimizer_step": _phase(t, *step),
            "refresh_step": _phase(t, *refresh)}


def moments(t: StepTerms, a: Activations) -> tuple:
    """The four phases' moments, each as (gradients, activations, temporaries): the other categories
    are the same at every moment, so the largest of these sums is the largest moment (the first of
    equal ones)."""
    return moments_and_peak(t, a)[0]


def moments_and_peak(t: StepTerms, a: Activations) -> tuple:
    """(the four moments, the peak phase's index in PHASES, its moment's sum): moments() and the
    largest of the four (the first of equal ones), found as they are made."""
    saved = a.saved(t.checkpointing, t.frozen_non_target)
    # while the loss runs. Under autocast each trainable weight's bf16 copy stays in autocast's cache
    # until the forward returns: saved for backward anyway (activations), but checkpointing drops what
    # the blocks saved, and the cache still holds the copies
    forward = (0, saved, a.loss_fwd_transient + (t.autocast_cache if t.checkpointing else 0))
    # the activations alive in the last block's backward: all saved but the loss's, what the head's
    # backward frees (its saved input; a frozen head saved none, but under autocast its matmul saved the
    # weight's bf16 copy) and what the final norm's frees (its input, and a trainable weight's
    # normalized value)
    frozen = t.frozen_non_target
    last_block = saved - a.loss_saved - (a.head_weight_copy if frozen else a.head_released) \
        - (a.block_input if frozen else a.block_input + a.frozen_norm_saving)
    backward, b_sum = _backward(t, a, saved, last_block)
    inputs = a.inputs
    if t.layerwise:
        step, s_sum = (0, inputs, 0), inputs
    else:
        step = (t.gradients, inputs, t.step_temp)
        s_sum = t.gradients + inputs + t.step_temp
    r = t.refresh_temp
    if r is None:
        refresh, r_sum = (backward, b_sum) if t.layerwise else (step, s_sum)
    elif t.layerwise:
        # the refresh runs inside backward, in the step of a projected (or adapted) weight: the first in
        # the last block's backward, with its gradient alive (and, with checkpointing, the block
        # recomputed), a tied head's gradient still in the engine's buffer. Not at the head's step or
        # the loss's moments: the head is never projected
        refresh, r_sum = backward, b_sum
        g, act = t.refresh_gradient, last_block
        tmp = a.head_input_grad + (a.block if t.checkpointing else 0) + t.tied_gradient + r
        if g + act + tmp > r_sum:
            refresh, r_sum = (g, act, tmp), g + act + tmp
    else:
        refresh = (step[0], step[1], max(step[2], r))
        r_sum = sum(refresh)
    peak, top = 0, saved + forward[2]
    if b_sum > top:
        peak, top = 1, b_sum
    if s_sum > top:
        peak, top = 2, s_sum
    if r_sum > top:
        peak, top = 3, r_sum
    return (forward, backward, step, refresh), peak, top


def _backward(t: StepTerms, a: Activations, saved: int, last_block: int) -> tuple:
    """The backward phase's moment and its sum: the largest of its candidate moments. The estimator's
    hot path (issue 14): each candidate is compared as it is made, no list of them."""
    loss_saved, grad_logits, head_in, first_grad = a.loss_saved, a.grad_logits, a.head_input_grad, t.first_gradient
    ckpt, layerwise, frozen = t.checkpointing, t.layerwise, t.frozen_non_target
    after_loss = saved - loss_saved  # the loss's backward released the log-softmax output

    # the loss's backward: nll's gradient and log_softmax's input gradient (fp32, t x V each)
    g, x, y = 0, saved, 2 * loss_saved
    best, top = (g, x, y), g + x + y
    if grad_logits != loss_saved:  # bf16 / mixed: the fp32 gradient cast to the compute dtype
        g, x, y = 0, after_loss, loss_saved + grad_logits
        if g + x + y > top:
            best, top = (g, x, y), g + x + y
    # the head's backward: the logits' gradient, the head's weight gradient and input gradient
    copy = a.head_weight_copy if first_grad else 0
    if copy:  # mixed: the matmul's weight gradient is bf16; its cast to the fp32 gradient follows, by
        # when the matmul has freed what it saved (its input and the weight's bf16 copy)
        g, x, y = 0, after_loss, grad_logits + head_in + copy
        if g + x + y > top:
            best, top = (g, x, y), g + x + y
        g, x, y = first_grad, after_loss - a.head_released, head_in + copy
    else:
        g, x, y = first_grad, after_loss, grad_logits + head_in
    if g + x + y > top:
        best, top = (g, x, y), g + x + y
    # checkpointing: a block's activations, recomputed in backward, are made then (transients, as the
    # measurement counts them), on top of the kept block inputs
    recomputed = a.block if ckpt else 0
    if ckpt:  # the last block recomputed while the head's input gradient flows in
        g, x, y = 0 if layerwise else first_grad, after_loss, head_in + recomputed
        if g + x + y > top:
            best, top = (g, x, y), g + x + y
    # what the head's backward frees: its saved input; a frozen head saved none, but under autocast
    # its matmul still saved the weight's bf16 copy (for the input gradient)
    released = a.head_weight_copy if frozen else a.head_released
    tied = t.tied_gradient
    if layerwise:
        # per-layer update: the head is stepped as soon as its gradient is complete; later
        # gradients are consumed one at a time while the activations shrink
        if tied:
            # a tied embedding's gradient is complete only at the end of backward: the head's
            # contribution waits in the engine's buffer, the sum holds three V x h tensors, then the step
            for g, x, y in ((0, a.inputs, 3 * tied), (tied, a.inputs, t.step_temp),
                            (0, after_loss, grad_logits + head_in + tied)):  # (the last: its first part)
                if g + x + y > top:
                    best, top = (g, x, y), g + x + y
            return best, top
        if first_grad:  # by then the head's backward has freed what it saved
            g, x, y = first_grad, after_loss - released, head_in + t.first_step_temp
            if g + x + y > top:
                best, top = (g, x, y), g + x + y
        if t.largest_gradient > first_grad:
            # a block weight larger than the head (a mixture of experts' 3-D weight): made and
            # stepped in the last block's backward, while nearly all activations are still alive
            g, x, y = t.largest_gradient, after_loss - released, head_in + t.step_temp
            if g + x + y > top:
                best, top = (g, x, y), g + x + y
        return best, top
    # a block's backward peak, in its MLP; with 4-bit base weights (bitsandbytes' MatMul4Bit) each
    # linear's backward dequantizes its whole weight for its input gradient, the larger of the two
    inside = a.block_backward
    if t.dequant_weight:
        deq = t.dequant_weight + t.dequant_width * a.token_bytes
        if deq > inside:
            inside = deq
    # the last block's: every activation alive but the head's and the final norm's (the block
    # recomputed first under checkpointing), the head's gradient and the MLP output linear's made
    g, x, y = first_grad + t.block_tail_gradient, last_block, head_in + recomputed + inside
    if g + x + y > top:
        best, top = (g, x, y), g + x + y
    # end of backward: every gradient; only the batch is left of the activations
    gradients, inputs = t.gradients, a.inputs
    if gradients + inputs > top:
        best, top = (gradients, inputs, 0), gradients + inputs
    # the first block's backward: every gradient but its own and the embeddings' (made after it),
    # its activations alive (recomputed under checkpointing, beside its kept input). Activations
    # shrink and gradients grow block by block, so the first and the last block are the ends
    first = a.block - 2 * a.frozen_norm_saving - a.frozen_qk_norm_saving - a.first_norm_input if frozen else a.block
    kept, made = (a.block_input, first) if ckpt else (first, 0)
    # (a recomposition that sets the gradients aside, memplan/parallel.py, leaves none made)
    g, x, y = max(gradients - t.unmade_at_first_block, 0), inputs + kept, head_in + made + inside + tied
    if g + x + y > top:
        best, top = (g, x, y), g + x + y
    if tied:
        # a tied embedding: the autograd engine holds the head's contribution in its input buffer
        # until the embedding's backward makes the second one (a dense V x h zeros + index_add),
        # then adds them out of place: three V x h tensors alive at once (measured, torch 2.13)
        g, x, y = gradients - tied, inputs, 3 * tied
        if g + x + y > top:
            best, top = (g, x, y), g + x + y
    return best, top
