"""The device total: the fragmentation rule (memplan/reserve.py) and the CUDA context per GPU."""
import json
from pathlib import Path

import memplan
from memplan.profiles import load_gpu
from memplan.reserve import (ACTIVATION_SHARE, CHECKPOINT_BLOCKS, DEFAULT_CONTEXT_BYTES, DEFAULT_WORKSPACE_BYTES,
                             GRADIENT_SHARE, LAYERWISE_SHARE, context_bytes, fragmentation_bytes, workspace_bytes)

MiB = 1 << 20
FIT = Path(__file__).parents[1] / "benchmarks" / "results" / "fragmentation_fit.json"


def test_rule_by_hand():
    phases = {"forward": {"gradients": 0, "activations": 400 * MiB},
              "backward": {"gradients": 1000 * MiB, "activations": 0},
              "optimizer_step": {"gradients": 1000 * MiB, "activations": 0}}
    assert fragmentation_bytes(phases) == int(GRADIENT_SHARE * 1000 * MiB + ACTIVATION_SHARE * 400 * MiB)
    assert fragmentation_bytes(phases, 10 * MiB) - fragmentation_bytes(phases) in (
        int(CHECKPOINT_BLOCKS * 10 * MiB), int(CHECKPOINT_BLOCKS * 10 * MiB) + 1)


def test_constants_are_the_fit():
    """reserve.py carries the coefficients benchmarks/fragmentation_fit.py fitted (rounded)."""
    fit = json.loads(FIT.read_text())["coefficients"]
    assert abs(fit["gradients"] - GRADIENT_SHARE) < 0.006
    assert abs(fit["activations"] - ACTIVATION_SHARE) < 0.006
    assert abs(fit["checkpoint_block"] - CHECKPOINT_BLOCKS) < 0.06
    assert abs(fit["layerwise_gradients"] - LAYERWISE_SHARE) < 0.006


def test_context_per_gpu_profile():
    h200, rtx = load_gpu("h200"), load_gpu("rtx-4090")
    assert context_bytes(h200) == 764 * MiB and "Measured" in h200.cuda_context_source
    assert context_bytes(rtx) == 530 * MiB and "Not measured" in rtx.cuda_context_source
    assert context_bytes(None) == DEFAULT_CONTEXT_BYTES
    assert workspace_bytes(h200) == 64 * MiB and workspace_bytes(rtx) == DEFAULT_WORKSPACE_BYTES == 2 * 8_519_680


def test_device_total_is_peak_fragmentation_and_the_gpus_context():
    est = memplan.estimate("llama-1b", "adamw", batch_size=1, seq_len=512)
    frag = fragmentation_bytes(est.phases)
    assert est.device_total_bytes == est.peak_bytes + frag + DEFAULT_WORKSPACE_BYTES + DEFAULT_CONTEXT_BYTES
    assert est.reserved_bytes == est.peak_bytes + frag + DEFAULT_WORKSPACE_BYTES
    fit = est.fit("h200")  # the H200's own measured context and workspaces, not the defaults
    assert fit.required_bytes == est.peak_bytes + frag + 64 * MiB + 764 * MiB
    on_h200 = memplan.estimate("llama-1b", "adamw", batch_size=1, seq_len=512, gpu="h200")
    assert on_h200.device_total_bytes == fit.required_bytes == on_h200.fit().required_bytes


def test_layerwise_adds_a_share_of_every_gradient():
    plain = memplan.estimate("llama-1b", "galore", rank=512, batch_size=1, seq_len=256)
    lw = memplan.estimate("llama-1b", "galore", rank=512, batch_size=1, seq_len=256, layerwise=True)
    grads = max(p["gradients"] for p in plain.phases.values())  # every gradient alive at once without it
    extra = (lw.reserved_bytes - lw.peak_bytes) - fragmentation_bytes(lw.phases) - DEFAULT_WORKSPACE_BYTES
    assert abs(extra - LAYERWISE_SHARE * grads) <= 1


def test_checkpointing_adds_recomputed_blocks():
    plain = memplan.estimate("llama-1b", "adamw", batch_size=4, seq_len=1024)
    ckpt = memplan.estimate("llama-1b", "adamw", batch_size=4, seq_len=1024, checkpointing=True)
    assert ckpt.reserved_bytes - ckpt.peak_bytes > fragmentation_bytes(ckpt.phases)
