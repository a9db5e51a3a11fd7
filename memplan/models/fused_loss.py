"""A pure-PyTorch re-implementation of Liger's fused linear cross-entropy, to measure its memory.

Liger-Kernel 0.8.5 `LigerFusedLinearCrossEntropyFunction` needs Triton and CUDA. This follows
its forward (`fused_linear_cross_entropy_forward`) allocation for allocation, on any device:
`grad_input` (t x h) and `grad_weight` (V x h, the weight's dtype) allocated whole, the fp32
per-token losses, one reused logits buffer of `chunk` x V (compute dtype) filled by `mm(out=)`;
per chunk the cross-entropy kernel's work (softmax, loss, gradient written over the logits in
place) done here row by row in one reused fp32 row buffer, then `mm(out=grad_input[chunk])` and
`grad_weight.addmm_` (the CUDA path for bf16 / fp32 weights on sm80+). Backward scales the two
saved gradients in place and returns them. The only difference in memory is the row-wise fp32
buffer (V floats, reused) where Triton keeps the row in registers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from memplan.loss import liger_chunk_size


class FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, target, chunk: int, ignore_index: int = -100):
        BT, H = x.shape
        V = weight.shape[0]
        grad_input = torch.zeros_like(x)
        grad_weight = torch.zeros_like(weight) if weight.requires_grad else None
        loss_1d = torch.zeros(BT, dtype=torch.float32, device=x.device)
        target_mask = target != ignore_index
        n = max(int(target_mask.sum().item()), 1)
        logits_storage = torch.empty((chunk, V), dtype=x.dtype, device=x.device)
        row = torch.empty(V, dtype=torch.float32, device=x.device)  # the kernel's registers: one fp32 row
        for start in range(0, BT, chunk):
            end = min(start + chunk, BT)
            x_chunk = x[start:end]
            logits = logits_storage[: end - start]
            torch.mm(x_chunk, weight.t(), out=logits)
            for i in range(end - start):  # the Triton kernel's row program: loss and gradient in place
                y = int(target[start + i])
                if y == ignore_index:
                    logits[i].zero_()
                    continue
                row.copy_(logits[i])
                picked = row[y].item()
                top = row.max().item()
                total = row.sub_(top).exp_().sum().item()
                loss_1d[start + i] = top + math.log(total) - picked
                row.div_(total)
                row[y] -= 1.0
                logits[i].copy_(row.div_(n))
            torch.mm(logits, weight, out=grad_input[start:end])
            if grad_weight is not None:
                grad_weight.addmm_(logits.t(), x_chunk)
        del logits_storage
        loss = loss_1d.sum() / n
        ctx.save_for_backward(grad_input, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight = ctx.saved_tensors
        if not torch.equal(grad_output, torch.tensor(1.0, device=grad_output.device, dtype=grad_output.dtype)):
            grad_input.mul_(grad_output)
            if grad_weight is not None:
                grad_weight.mul_(grad_output)
        return grad_input, grad_weight, None, None, None


def fused_causal_lm_loss(model, batch, chunk: int | None = None, ignore_index: int = -100):
    """The bundled LlamaForCausalLM's loss with the head and cross-entropy fused (no logits)."""
    hidden = model.model(batch["input_ids"])
    labels = F.pad(batch["labels"], (0, 1), value=ignore_index)[..., 1:].contiguous()
    B, T, H = hidden.shape
    V = model.lm_head.weight.shape[0]
    chunk = chunk or liger_chunk_size(B * T, H, V)
    return FusedLinearCrossEntropy.apply(hidden.reshape(B * T, H), model.lm_head.weight, labels.reshape(-1), chunk,
                                         ignore_index)
