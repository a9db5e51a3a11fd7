"""Mixture-of-experts decoders (Mixtral): the experts' tensors and the activations of routed tokens.

A Mixtral block is a LLaMA block whose MLP is replaced by a router and E experts
(transformers' `MixtralSparseMoeBlock`): the router `gate` (E x h) scores every
token, each token goes to its top-k experts, and each expert is a SwiGLU MLP.
transformers stores the experts as two 3-D parameters, `experts.gate_up_proj`
(E, 2i, h) and `experts.down_proj` (E, h, i). Every expert is trained, so all E
experts' parameters, gradients and optimizer states are held; the activations
grow with the routed tokens, t x k, not with E.

Checked against `transformers.MixtralForCausalLM` (random weights) under
FakeTensorMode with memplan's tracker: tests/test_moe.py.
"""
from __future__ import annotations

from memplan.inventory import TensorSpec
from memplan.profiles import ModelProfile


def moe_tensors(p: ModelProfile, prefix: str):
    """The router and the experts of one block (HF names, `prefix` = 'model.layers.N.mlp')."""
    h, i, E = p.hidden_size, p.intermediate_size, p.num_local_experts
    yield TensorSpec(f"{prefix}.gate.weight", (E, h), "router")
    # 3-D expert weights are never projected (GaLore-style methods and LoRA adapt 2-D weights)
    yield TensorSpec(f"{prefix}.experts.gate_up_proj", (E, 2 * i, h), "mlp")
    yield TensorSpec(f"{prefix}.experts.down_proj", (E, h, i), "mlp")


def moe_block(p: ModelProfile, t: int, c: int, frozen: bool = False) -> int:
    """Activation bytes the router and experts of one block save for backward (the dense MLP's terms
    are taken out by the caller, memplan/activations.py).

    transformers' default experts path (`grouped_mm`, bf16) saves, for t tokens routed to k experts
    each (S = t k routed rows), measured tensor by tensor in tests/test_moe.py. `frozen`: the experts
    and router are frozen (adapter methods), so nothing is kept for their weight gradients.
    """
    E, k, h, i = p.num_local_experts, p.num_experts_per_tok, p.hidden_size, p.intermediate_size
    S = t * k
    router = (
        4 * t * E  # softmax of the router logits (fp32), saved by softmax
        + 4 * t  # the top-k weights' sum (fp32), saved by the in-place normalization
        + 12 * S  # top-k indices (int64) and the normalized top-k weights (fp32)
    )
    experts = (
        2 * c * S * i  # gate_up_proj output (S x 2i): SiLU saves the gate half, the product the up half
        + c * S * i  # SiLU output (saved by the product)
        + c * S * h  # down_proj output, saved by the multiply with the routing weights
        + 4 * S  # the routing weights in expert order (fp32)
        + 3 * 8 * S  # the sort permutation, its inverse and token index (int64), saved by the gathers
        + 4 * E  # grouped_mm's per-expert offsets (int32)
    )
    if not frozen:  # grouped_mm keeps its input for the weight gradient
        experts += c * S * h + c * S * i  # the routed copy of each token's hidden state; down_proj's input
    return router + experts
