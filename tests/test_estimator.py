"""Exact byte counts worked out by hand on a tiny model, for every method.

The tiny model (tests/data/tiny_llama.json): h=64, i=128, 4 heads of 16, 2 kv heads
(kv width 32), one block, vocab 100, untied head. Its 12 tensors:
  embed (100, 64) 6400 | head (100, 64) 6400 | 3 norms (64,)
  q (64, 64) 4096 | k (32, 64) 2048 | v (32, 64) 2048 | o (64, 64) 4096
  gate (128, 64) 8192 | up (128, 64) 8192 | down (64, 128) 8192
Total 49,856; non-projected 12,992 (5 tensors); projected 36,864 (7 tensors).
bf16, rank 8: state element 2 bytes; each stateful tensor keeps a 4-byte step.
These are the bundled implementations' counts (`BUNDLED`); the libraries' records
(torch foreach, galore-torch, transformers, bitsandbytes, peft) are in test_impls.py.
"""
import pytest

import memplan
from memplan import METHODS, estimate

R = 8
STEP = 4

# (optimizer_states, projectors) per method, by hand:
EXPECTED = {
    # 2 moments x 49856 x 2 B + 12 steps
    "adamw": (2 * 49856 * 2 + 12 * STEP, 0),
    # one momentum buffer, no step
    "sgd": (49856 * 2, 0),
    # fp32: matrices (m + n) * 4 + N * 4 + step; vectors 2 * N * 4 + step
    "adafactor": (2 * (164 * 4 + 6400 * 4 + 4) + 2 * (128 * 4 + 4096 * 4 + 4) + 2 * (96 * 4 + 2048 * 4 + 4)
                  + 3 * (192 * 4 + 8192 * 4 + 4) + 3 * (2 * 64 * 4 + 4), 0),
    # 8-bit: N >= 4096 -> 2 x (N codes + ceil(N/256) fp32 absmax); smaller -> 2 fp32 moments; + 2048 B of maps
    "adam8bit": (2 * (2 * (6400 + 25 * 4) + 4) + 2 * (2 * (4096 + 16 * 4) + 4) + 2 * (2 * 2048 * 4 + 4)
                 + 3 * (2 * (8192 + 32 * 4) + 4) + 3 * (2 * 64 * 4 + 4) + 2048, 0),
    # projected: 2 moments x r x K + step (K = 64 for q/k/v/o, 128 for the MLP); others AdamW;
    # projectors r x k (k = 64, 32, 32, 64, 64, 64, 64)
    "galore": (4 * (2 * R * 64 * 2 + 4) + 3 * (2 * R * 128 * 2 + 4) + 2 * 12992 * 2 + 5 * 4,
               R * (64 + 32 + 32 + 64 + 3 * 64) * 2),
    # r x K = 512 or 1024 < 4096: fp32 moments; embed/head quantized (adam8bit); maps once
    "golore": (4 * (2 * R * 64 * 2 + 4) + 3 * (2 * R * 128 * 2 + 4) + 2 * 12992 * 2 + 5 * 4,
               R * (64 + 32 + 32 + 64 + 3 * 64) * 2),  # same state as GaLore
    "galore8bit": (4 * (2 * R * 64 * 4 + 4) + 3 * (2 * R * 128 * 4 + 4)
                   + 2 * (2 * (6400 + 25 * 4) + 4) + 3 * (2 * 64 * 4 + 4) + 2048,
                   R * (64 + 32 + 32 + 64 + 3 * 64) * 2),
    # one moment r x k + limiter scalar + step; Q is K x r
    "sumo": ((R * 64 * 2 + 8) * 2 + (R * 32 * 2 + 8) * 2 + (R * 64 * 2 + 8) * 3 + 2 * 12992 * 2 + 5 * 4,
             R * (64 * 4 + 128 * 3) * 2),
    # GaLore's + magnitude g and its two moments: 3 x m per projected weight (sum of m = 512)
    "gradnormlorp": (4 * (2 * R * 64 * 2 + 4) + 3 * (2 * R * 128 * 2 + 4) + 2 * 12992 * 2 + 5 * 4 + 3 * 512 * 2,
                     R * (64 + 32 + 32 + 64 + 3 * 64) * 2),
    "gradnormlorp8bit": (4 * (2 * R * 64 * 4 + 4) + 3 * (2 * R * 128 * 4 + 4)
                         + 2 * (2 * (6400 + 25 * 4) + 4) + 3 * (2 * 64 * 4 + 4) + 2048 + 3 * 512 * 2,
                         R * (64 + 32 + 32 + 64 + 3 * 64) * 2),
    # adapters: r x (m + n) per projected weight = 8 x (128 + 96 + 96 + 128 + 3 x 192) = 8192 elements, 14 tensors
    "lora": (2 * 8192 * 2 + 14 * 4, 0),  # non-target frozen (fine-tuning default)
    "relora": (2 * (8192 + 12992) * 2 + 19 * 4, 0),  # pre-training: non-target trainable
    "lowrank": (2 * (8192 + 12992) * 2 + 19 * 4, 0),
    # the libraries' records (memplan/rules_recent.py, checked against each library in test_recent_methods.py);
    # no 0-d step tensors (Python ints). APOLLO: GaLore's moments + the limiter's 0-d bf16 norm (2 B)
    "apollo": (4 * (2 * R * 64 * 2 + 2) + 3 * (2 * R * 128 * 2 + 2) + 2 * 12992 * 2,
               R * (64 + 32 + 32 + 64 + 3 * 64) * 2),
    "apollo-mini": (4 * (2 * 64 * 2 + 2) + 3 * (2 * 128 * 2 + 2) + 2 * 12992 * 2, (64 + 32 + 32 + 64 + 3 * 64) * 2),
    "fira": (4 * (2 * R * 64 * 2 + 2) + 3 * (2 * R * 128 * 2 + 2) + 2 * 12992 * 2,
             R * (64 + 32 + 32 + 64 + 3 * 64) * 2),
    # r x K < 4096: fp32 moments; embed/head 8-bit; norms fp32; maps once. Projector: r x k uint8 codes,
    # scale and zero per 256 (bf16), the previous first vector (k, bf16): 648 for k = 64, 324 for k = 32
    "qgalore": (4 * 2 * R * 64 * 4 + 3 * 2 * R * 128 * 4 + 2 * 2 * (6400 + 25 * 4) + 3 * 2 * 64 * 4 + 2048,
                5 * (512 + 2 * 2 * 2 + 64 * 2) + 2 * (256 + 2 * 1 * 2 + 32 * 2)),
    # fp32 adapters (8192 elements, all below 4096 per tensor): fp32 moments, no maps, no steps
    "qlora": (2 * 8192 * 4, 0),
}

# the implementation whose state the hand counts above describe (memplan's bundled build)
BUNDLED = {"adamw": dict(impl="torch-forloop"), "sgd": dict(impl="torch", momentum=0.9),
           "apollo": {}, "apollo-mini": {}, "fira": {}, "qgalore": {}, "qlora": {}}  # their libraries' records


def bundled(method: str) -> dict:
    return BUNDLED.get(method, dict(impl="bundled"))


# INT8 (Q-GaLore): N codes + bf16 scale and zero per 256; NF4 (QLoRA): N/2 codes, N/64 uint8 absmax, a 4 B
# offset, one fp32 per 256 absmax, the 64 B NF4 table and the 1024 B nested map, per weight
INT8 = 2 * (4096 + 2 * 16 * 2) + 2 * (2048 + 2 * 8 * 2) + 3 * (8192 + 2 * 32 * 2)
NF4 = 2 * (2048 + 64 + 4 + 4 + 64 + 1024) + 2 * (1024 + 32 + 4 + 4 + 64 + 1024) + 3 * (4096 + 128 + 4 + 4 + 64 + 1024)
PARAMS = {"lora": (49856 + 8192) * 2, "relora": (49856 + 8192) * 2, "lowrank": (12992 + 8192) * 2,
          "qgalore": 12992 * 2 + INT8, "qlora": 12992 * 2 + NF4 + 8192 * 4}
GRADS = {"lora": 8192 * 2, "relora": (8192 + 12992) * 2, "lowrank": (8192 + 12992) * 2, "qlora": 8192 * 4}


def test_every_method_has_a_hand_count():
    assert set(EXPECTED) == set(METHODS)


def test_tiny_parameter_count(tiny):
    assert memplan.parameter_count(tiny) == 49856


@pytest.mark.parametrize("method", sorted(METHODS))
def test_exact_state_bytes(tiny, method):
    est = estimate(tiny, method, rank=R, precision="bf16", batch_size=2, seq_len=16, **bundled(method))
    step = est.phases["optimizer_step"]
    states, projectors = EXPECTED[method]
    assert step["optimizer_states"] == states
    assert step["projectors"] == projectors
    assert step["parameters"] == PARAMS.get(method, 49856 * 2)
    assert step["gradients"] == GRADS.get(method, 49856 * 2)


@pytest.mark.parametrize("precision,pb", [("bf16", 2), ("mixed", 4), ("fp32", 4)])
def test_precision_bytes(tiny, precision, pb):
    est = estimate(tiny, "adamw", precision=precision, batch_size=1, seq_len=8)
    step = est.phases["optimizer_step"]
    assert step["parameters"] == 49856 * pb
    assert step["gradients"] == 49856 * pb
    assert step["optimizer_states"] == 2 * 49856 * pb + 12 * STEP


PROFILE_COUNTS = {
    "llama-60m": 58_073_600,
    "llama-130m": 134_105_856,
    "llama-350m": 367_969_280,
    "llama-1b": 1_339_082_752,
    "llama-3b": 2_685_831_680,
    "llama-7b": 6_738_415_616,
    "llama-13b": 13_015_864_320,
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "roberta-base": 124_697_433,  # RobertaForMaskedLM, decoder tied
    "roberta-large": 355_412_057,
    "opt-13b": 12_853_473_280,
    "mixtral-8x7b": 46_702_792_704,  # MixtralForCausalLM: 8 experts per block, all counted
    "opt-1.3b": 1_315_758_080,  # OPTForCausalLM (HF class count, measured)
    "gpt2": 124_439_808,  # GPT2LMHeadModel, head tied
    # Qwen2ForCausalLM: q, k, v biased; the model cards' 0.49B / 1.54B / 7.61B / 14.7B (non-embedding
    # 0.36B / 1.31B / 6.53B); counted by the HF class in tests/test_hf_families.py too
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-14b": 14_770_033_664,
    # Qwen3ForCausalLM: q_norm and k_norm (head_dim each) per block; the cards' 0.6B / 8.2B (non-embedding
    # 0.44B / 6.95B)
    "qwen3-0.6b": 596_049_920,
    "qwen3-8b": 8_190_735_360,
}


@pytest.mark.parametrize("name,count", sorted(PROFILE_COUNTS.items()))
def test_profile_parameter_counts(name, count):
    assert memplan.parameter_count(name) == count


def test_every_builtin_profile_is_counted():
    assert set(memplan.model_names()) == set(PROFILE_COUNTS)


@pytest.mark.parametrize("model", sorted(PROFILE_COUNTS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_and_profile_runs(model, method):
    est = estimate(model, method, rank=64, batch_size=1, seq_len=256)
    d = est.to_dict()
    assert set(d["breakdown"]) == set(memplan.CATEGORIES)
    assert set(d["phases"]) == set(memplan.PHASES)
    assert all(isinstance(v, int) and v >= 0 for v in d["breakdown"].values())
    assert d["peak_allocated_bytes"] == max(p["allocated"] for p in d["phases"].values())
    assert d["device_total_bytes"] > d["peak_allocated_bytes"]


def test_peak_is_largest_phase_not_sum():
    est = estimate("llama-1b", "galore", rank=128, batch_size=4, seq_len=512)
    totals = {p: sum(v.values()) for p, v in est.phases.items()}
    assert est.peak_bytes == max(totals.values())
    assert est.peak_phase == max(totals, key=totals.get)
    # the sum of every category's maximum over phases is more than any phase
    summed = sum(max(est.phases[p][c] for p in memplan.PHASES) for c in memplan.CATEGORIES[:-1])
    assert summed > est.peak_bytes


def test_fit_verdict_uses_device_total():
    est = estimate("llama-7b", "galore8bit", rank=128, layerwise=True, checkpointing=True, seq_len=2048,
                   gpu="rtx-4090")
    fit = est.fit()
    assert fit.required_bytes == est.device_total_bytes
    assert fit.fits == (est.device_total_bytes <= fit.capacity_bytes)
    assert fit.headroom_bytes == fit.capacity_bytes - est.device_total_bytes
    assert est.fit("h100-80gb").headroom_bytes > fit.headroom_bytes


def test_llama7b_adamw_does_not_fit_a_4090():
    assert not estimate("llama-7b", "adamw").fit("rtx-4090").fits
    assert estimate("llama-60m", "adamw", batch_size=1, seq_len=256).fit("rtx-4090").fits


def test_config_json_folder_and_file(tmp_path, tiny):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(open(tiny).read())
    a = estimate(str(folder), "galore", rank=8, seq_len=16)
    b = estimate(tiny, "galore", rank=8, seq_len=16)
    assert a.phases == b.phases
    assert a.config.model.name == "my-model"


def test_json_is_ready():
    import json

    d = estimate("llama-7b", "golore", rank=128, gpu="rtx-4090").to_dict()
    again = json.loads(json.dumps(d))
    assert again["fit"]["gpu"] == "rtx-4090"
    assert again["config"]["method"] == "golore"
    assert "allocated" in again["phases"]["backward"]


def test_import_does_not_pull_torch():
    import subprocess
    import sys

    code = "import sys, memplan; memplan.estimate('llama-7b', 'galore'); " \
           "print(','.join(m for m in ('torch', 'streamlit', 'plotly') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _clear_estimator_tables():
    from memplan import estimator as E
    E._STATIC.clear()
    E._ACTS.clear()
    E._ACTS_TOKENS.clear()
    E._step_terms.cache_clear()


def test_kept_tables_do_not_change_an_estimate():
    """estimate_config keeps the batch-independent part, the activations and the checks per set of
    fields: estimates made with the tables warm (other batches, other methods first) are the ones made
    with them empty, to the byte."""
    import itertools
    cases = [dict(method=m, batch_size=b, seq_len=s, precision=p, layerwise=lw)
             for m, b, s, p, lw in itertools.product(("adamw", "galore", "lora", "adam8bit"), (1, 3), (256, 1024),
                                                    ("bf16", "mixed"), (False, True))
             if not (lw and m == "lora")]
    fresh = []
    for kw in cases:
        _clear_estimator_tables()
        fresh.append(estimate("llama-1b", rank=64, gpu="rtx-4090", **kw).to_dict())
    _clear_estimator_tables()
    warm = [estimate("llama-1b", rank=64, gpu="rtx-4090", **kw).to_dict() for kw in reversed(cases)][::-1]
    assert warm == fresh


def test_checks_still_refuse_batch_and_sequence_after_a_valid_config():
    estimate("mistral-7b", "adamw", batch_size=1, seq_len=1024)  # its fields now known valid
    with pytest.raises(memplan.MemplanError, match="Batch size must be a positive integer"):
        estimate("mistral-7b", "adamw", batch_size=0, seq_len=1024)
    with pytest.raises(memplan.MemplanError, match="Batch size must be a positive integer"):
        estimate("mistral-7b", "adamw", batch_size=True, seq_len=1024)
    with pytest.raises(memplan.MemplanError, match="attention window"):
        estimate("mistral-7b", "adamw", batch_size=1, seq_len=10**5)
    estimate("llama-7b", "golore", rank=128)
    with pytest.raises(memplan.MemplanError, match="Rank"):
        estimate("llama-7b", "golore", rank=True)  # equal to 1 as a key, but not an integer rank


def test_phases_built_on_first_use_are_the_composed_ones():
    """estimate_config keeps the four moments and builds `phases` when first read; the peak it
    records is the one the phases give, and a pickled estimate carries its phases."""
    import pickle

    from memplan.phases import compose

    for kw in (dict(method="adamw"), dict(method="galore", layerwise=True), dict(method="lora", precision="mixed"),
               dict(method="relora", checkpointing=True)):
        est = estimate("llama-1b", gpu="rtx-4090", batch_size=2, seq_len=512, **kw)
        assert "phases" not in est.__dict__
        peak_phase, peak = est.peak_phase, est.peak_bytes  # recorded when made
        assert est.phases == compose(est.terms, est.acts)
        totals = {p: sum(v.values()) for p, v in est.phases.items()}
        assert (peak_phase, peak) == (max(totals, key=totals.get), max(totals.values()))
        again = pickle.loads(pickle.dumps(est))
        assert again.phases == est.phases and again.peak_bytes == peak


def test_configs_and_profiles_pickle_without_their_caches():
    """A config keeps its key in the estimator's table and a profile its hash (string hashes differ
    between processes): neither travels in a pickle, and the copies estimate the same."""
    import pickle

    from memplan.estimator import make_config

    c = make_config("llama-7b", "galore", rank=64)
    est = estimate(c)
    hash(c.model)
    assert {"_fields_key", "_static"} <= c.__dict__.keys() and "_hash" in c.model.__dict__
    copy = pickle.loads(pickle.dumps(c))
    assert not [k for k in copy.__dict__ if k.startswith("_")]
    assert "_hash" not in copy.model.__dict__
    assert copy == c and hash(copy.model) == hash(c.model)
    assert estimate(copy).to_dict() == est.to_dict()


def test_a_changed_config_is_what_replace_makes_checked_the_same():
    """make_config(config, **changes), the planner's and the sweeps' path, builds the new config in
    one dict: equal to dataclasses.replace's, refused for the same values, and never carrying the
    original's table key (an unpickled config has none)."""
    import pickle
    from dataclasses import replace

    from memplan.estimator import make_config

    c = make_config("llama-7b", "galore", rank=64, batch_size=2)
    for changes in ({"batch_size": 8}, {"seq_len": 512, "rank": 32}, {"method": "adamw"}, {"checkpointing": True}):
        new = make_config(c, **changes)
        assert new == replace(c, **changes)
        assert new.__dict__["_fields_key"] == replace(c, **changes).__dict__["_fields_key"]
        assert estimate(new).to_dict() == estimate(replace(c, **changes)).to_dict()
    assert make_config(c) is c
    assert make_config(c, "galore8bit").method == "galore8bit"
    for bad, match in (({"batch_size": 0}, "Batch size must be a positive integer"),
                       ({"rank": True}, "rank"), ({"precision": "fp64"}, "precision"),
                       ({"batch": 4}, r"Unknown option\(s\) batch\. Allowed:")):
        with pytest.raises(memplan.MemplanError, match=match):
            make_config(c, **bad)
    copy = pickle.loads(pickle.dumps(c))
    assert make_config(copy, batch_size=8) == make_config(c, batch_size=8)
