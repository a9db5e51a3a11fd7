"""Implementation records of QLoRA, Q-GaLore, APOLLO, APOLLO-Mini and Fira (rules in rules_recent.py).

Each record names the library and version it models. The library runs on CPU tensors here
(bitsandbytes 0.50.2's CPU backend included), and tests/test_recent_methods.py checks every
rule against it tensor by tensor. Two shims, both stated there: q-galore-torch 1.0 and
apollo-torch's QAPOLLOAdamW were written for an older bitsandbytes (their `update_step`
reads a `percentile_clipping` key that bitsandbytes 0.50 no longer puts in the config, and
their positional arguments land `percentile_clipping=100` on bitsandbytes 0.50's
`max_unorm`), and they call `torch.cuda.synchronize()` unconditionally.
"""
from __future__ import annotations

from memplan import rules_recent as rec
from memplan.impls import Impl, _lift, register

_TESTS = "tests/test_recent_methods.py (library on CPU tensors, tensor by tensor)"

for _impl in [
    Impl("qlora", "peft-bitsandbytes", "peft 0.21 LoRA on bitsandbytes 0.50.2 Linear4bit (NF4, double quant) + "
         "bnb.optim.PagedAdamW8bit", "fp32 adapters (peft's default under a 4-bit base), paged 8-bit moments",
         _lift(rec.qlora_state), _lift(rec.no_temp), adapter_bytes=4, checked_by=_TESTS),
    Impl("qgalore", "q-galore-torch", "q-galore-torch 1.0 AdamW8bit, INT8 weights (float_grad path), INT4 "
         "projections, on bitsandbytes 0.50.2", "8-bit low-rank moments; weights dequantized and re-quantized "
         "per step", _lift(rec.qgalore_state), _lift(rec.qgalore_int8_step_temp),
         _lift(rec.qgalore_int8_refresh_temp), checked_by=_TESTS),
    Impl("qgalore", "q-galore-torch-bf16", "q-galore-torch 1.0 AdamW8bit on bf16 weights, INT4 projections",
         "Q-GaLore's optimizer with unquantized weights (--weights bf16)", _lift(rec.qgalore_state),
         _lift(rec.qgalore_step_temp), _lift(rec.qgalore_refresh_temp), checked_by=_TESTS),
    Impl("apollo", "apollo-torch", "apollo-torch 1.0.3 APOLLOAdamW (proj random, scale_type channel)",
         "moments of a random projection set channel-wise scales of the raw gradient",
         _lift(rec.apollo_state), _lift(rec.apollo_step_temp), _lift(rec.apollo_refresh_temp), checked_by=_TESTS),
    Impl("apollo", "q-apollo", "apollo-torch 1.0.3 QAPOLLOAdamW, INT8 weights, bitsandbytes 0.50.2 32-bit states",
         "APOLLO on INT8 weights (--weights int8): fp32 moments, weights re-quantized per step",
         _lift(rec.qapollo_state), _lift(rec.qapollo_step_temp), _lift(rec.qapollo_step_temp), checked_by=_TESTS),
    Impl("apollo-mini", "apollo-torch", "apollo-torch 1.0.3 APOLLOAdamW (rank 1, scale_type tensor, scale 128)",
         "one tensor-wise scale per weight from a rank-1 random projection",
         _lift(rec.apollo_mini_state), _lift(rec.apollo_mini_step_temp), _lift(rec.apollo_mini_refresh_temp),
         checked_by=_TESTS),
    Impl("apollo-mini", "q-apollo", "apollo-torch 1.0.3 QAPOLLOAdamW (rank 1, tensor), INT8 weights",
         "APOLLO-Mini on INT8 weights (--weights int8), the paper's 7B-in-12GB setting",
         _lift(rec.qapollo_mini_state), _lift(rec.qapollo_mini_step_temp), _lift(rec.qapollo_mini_step_temp),
         checked_by=_TESTS),
    Impl("fira", "fira", "fira 1.0.2 FiraAdamW", "GaLore's subspace Adam plus the scaled residual gradient",
         _lift(rec.fira_state), _lift(rec.fira_step_temp), _lift(rec.fira_refresh_temp),
         sequence_temp=lambda shapes, r, s, o: rec.fira_walk(shapes, r, s, False),
         sequence_refresh=lambda shapes, r, s, o: rec.fira_walk(shapes, r, s, True), regular_first=True,
         checked_by=_TESTS + "; whole models: benchmarks/validate_recent_methods.py"),
]:
    register(_impl)
