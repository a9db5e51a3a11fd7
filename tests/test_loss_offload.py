"""--loss fused-chunked (Liger's fused linear cross-entropy) and --offload (torchao's CPUOffloadOptimizer).

Liger needs Triton and CUDA and torchao's CPUOffloadOptimizer asserts a CUDA device, so neither
runs here: the fused loss is measured through a faithful pure-PyTorch re-implementation
(memplan/models/fused_loss.py), the offload rule is checked by hand counts from torchao's source.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import memplan
from memplan.cli.main import cli
from memplan.errors import MemplanError
from memplan.loss import liger_chunk_size


def test_liger_chunk_size_follows_its_source():
    assert liger_chunk_size(4096 * 4, 4096, 32000) == 2048  # the example in Liger's comment
    assert liger_chunk_size(2048, 4096, 128256) == 64
    assert liger_chunk_size(100, 4096, 4096) == 100  # one chunk covers the tokens


@pytest.fixture
def big_vocab(tmp_path, tiny):
    """The tiny model with an 8192-token vocabulary: the logits dominate, as in Llama-3."""
    cfg = json.load(open(tiny))
    cfg["vocab_size"] = 8192
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _model(path, seed=0):
    import torch

    from memplan.models import build_model

    torch.manual_seed(seed)
    return build_model(memplan.load_model(path), dtype=torch.float32)


def test_fused_loss_equals_the_standard_loss_and_gradients(big_vocab):
    torch = pytest.importorskip("torch")
    from memplan.models.fused_loss import fused_causal_lm_loss

    ids = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids.clone()}
    a, b = _model(big_vocab), _model(big_vocab)
    la, lb = a(**batch), fused_causal_lm_loss(b, batch, chunk=5)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, atol=1e-5)
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), n


def test_fused_loss_memory_matches_the_estimate(big_vocab):
    """Standard vs fused on the same run: phases within 1% of the re-implementation's measured bytes."""
    torch = pytest.importorskip("torch")
    from memplan.measure.step import measure_step
    from memplan.models.fused_loss import fused_causal_lm_loss

    B, T = 4, 64
    ids = torch.randint(0, 8192, (B, T), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "labels": ids.clone()}
    peaks = {}
    for loss, fn in (("standard", lambda m, b: m(**b)), ("fused-chunked", fused_causal_lm_loss)):
        model = _model(big_vocab)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        measured = [measure_step(model, opt, batch, fn) for _ in range(2)][1]
        est = memplan.estimate(big_vocab, "sgd", impl="torch", momentum=0.0, precision="fp32", batch_size=B,
                               seq_len=T, loss=loss)
        for phase in ("forward", "backward", "optimizer_step"):
            e, m = sum(est.phases[phase].values()), measured.phases[phase]["total"]
            assert abs(e - m) / m <= 0.01, (loss, phase, e, m)
        peaks[loss] = (est.peak_bytes, measured.peak_bytes)
    assert peaks["fused-chunked"][1] < 0.35 * peaks["standard"][1]  # the logits never materialized


def test_fused_loss_cuts_llama3_activations():
    std = memplan.estimate("llama3-8b", "galore", rank=128, batch_size=4)
    fused = memplan.estimate("llama3-8b", "galore", rank=128, batch_size=4, loss="fused-chunked")
    assert fused.phases["forward"]["activations"] < std.phases["forward"]["activations"]
    assert fused.peak_bytes < std.peak_bytes - 8 * 2**30  # t x V fp32 logits and their gradient, gone


# ---------------------------------------------------------------- offload (torchao CPUOffloadOptimizer)

def test_offload_moves_large_tensors_state_to_the_host(tiny):
    # tiny: tensors >= 4096 elements: embed, head (6400), q, o (4096), gate, up, down (8192); bf16
    big = 2 * 6400 + 2 * 4096 + 3 * 8192
    small = 49856 - big  # k, v (2048 each) and 3 norms stay on the device
    base = memplan.estimate(tiny, "adamw", impl="torch-fused", batch_size=1, seq_len=8)
    off = memplan.estimate(tiny, "adamw", impl="torch-fused", batch_size=1, seq_len=8, offload="optimizer")
    n_big = 7
    assert off.host_bytes == big * 2 + big * 2 + 2 * big * 2 + n_big * 4  # pinned weight + grad, moments + step
    assert off.host_pinned_bytes == big * 4
    step = off.phases["optimizer_step"]
    assert step["optimizer_states"] == 2 * small * 2 + 5 * 4
    assert step["gradients"] == base.phases["optimizer_step"]["gradients"]  # gradients stay on the device
    grads_off = memplan.estimate(tiny, "adamw", impl="torch-fused", batch_size=1, seq_len=8,
                                 offload="optimizer+gradients")
    assert grads_off.phases["optimizer_step"]["gradients"] == 0
    assert grads_off.peak_bytes < off.peak_bytes


def test_offload_fit_checks_host_ram():
    est = memplan.estimate("llama-7b", "adamw", offload="optimizer+gradients", checkpointing=True)
    assert est.fit("rtx-4090").fits
    assert not est.fit("rtx-4090", host_ram=32 * 2**30).fits
    assert est.fit("rtx-4090", host_ram=64 * 2**30).fits


def test_offload_and_weights_refuse_methods_they_do_not_model():
    with pytest.raises(MemplanError, match="CPUOffloadOptimizer"):
        memplan.estimate("llama-60m", "galore", offload="optimizer")
    with pytest.raises(MemplanError, match="allows bf16"):
        memplan.estimate("llama-60m", "galore", weights="int8")
    with pytest.raises(MemplanError, match="fused-chunked"):
        memplan.estimate("llama-60m", "adamw", loss_chunk=64)


def test_cli_reports_the_host_figure_and_the_options():
    r = CliRunner().invoke(cli, ["estimate", "--model", "llama-7b", "--method", "adamw", "--offload", "optimizer",
                                 "--gpu", "rtx-4090", "--host-ram", "32"])
    assert r.exit_code == 0, r.output
    assert "offload optimizer" in r.output and "Host memory:" in r.output and "DOES NOT FIT in 32.00 GiB" in r.output
    r = CliRunner().invoke(cli, ["estimate", "--model", "llama-7b", "--method", "apollo-mini", "--weights", "int8",
                                 "--gpu", "rtx-4060-ti-16gb", "--json"])
    d = json.loads(r.output)
    assert d["config"]["weights"] == "int8" and d["impl"] == "q-apollo"
    r = CliRunner().invoke(cli, ["estimate", "--model", "llama-7b", "--method", "adamw", "--weights", "nf4"])
    assert r.exit_code == 2 and r.output.startswith("Error: ")


def test_fit_and_compare_take_offload_and_loss_and_say_who_is_left_out():
    r = CliRunner().invoke(cli, ["fit", "--model", "llama-7b", "--gpu", "rtx-4090", "--offload", "optimizer+gradients",
                                 "--layerwise", "--checkpointing"])
    assert r.exit_code == 0, r.output
    assert "offload optimizer+gradients" in r.output and "Left out (they do not take --offload" in r.output
    assert "galore" in r.output.split("Left out")[1] and "\nadamw " in r.output
    r = CliRunner().invoke(cli, ["compare", "--model", "llama3-8b", "--methods", "adamw,galore,qlora",
                                 "--loss", "fused-chunked", "--json"])
    rows = {d["method"]: d for d in json.loads(r.output)}
    std = memplan.estimate("llama3-8b", "galore").peak_bytes
    assert rows["galore"]["peak_allocated_bytes"] == memplan.estimate("llama3-8b", "galore", loss="fused-chunked").peak_bytes
    assert rows["galore"]["peak_allocated_bytes"] <= std
    r = CliRunner().invoke(cli, ["compare", "--model", "llama-7b", "--methods", "galore", "--offload", "optimizer"])
    assert r.exit_code == 2 and r.output.startswith("Error: No method given takes --offload")


def test_advise_keeps_offload_within_the_host_ram():
    from memplan.advisor import advise

    roomy = advise("llama-7b", "rtx-4090", "adamw")
    tight = advise("llama-7b", "rtx-4090", "adamw", host_ram=32 * 2**30)
    offloads = lambda a: [o for o in a.single + a.pairs if any(c.key == "offload" for c in o.changes)]  # noqa: E731
    assert offloads(roomy) and not offloads(tight)
