"""Validation grids: models x methods x {layer-wise} x {checkpointing}, and their summary.

``small``: llama-60m and llama-130m measured for real on the CPU (fp32: this
CPU's bf16 matmuls are ~50x slower than fp32), llama-1b and llama-7b under
FakeTensorMode in bf16 (the GaLore recipes' precision); every method; layer-wise
on and off; checkpointing on and off (see ``_SMALL`` for which model gets which).
``full`` runs every combination on every model. Both also measure the Hugging Face class
of every family memplan estimates (``_FAMILIES``: LLaMA, Llama-3, Mistral, Qwen2.5, Qwen3,
GPT-2, OPT, RoBERTa; two in mixed precision with checkpointing) at activation-heavy points (batch x seq 4 x 1024, fake; RoBERTa 4 x 512, its
longest), with SDPA and eager attention, with the config's dropout and without
(``families`` runs these alone).
"""
from __future__ import annotations

import itertools
import statistics
from dataclasses import replace

from memplan.measure.validate import EXACT, ValidateConfig, validate

ALL_METHODS = ("adamw", "sgd", "adafactor", "adam8bit", "lora", "relora", "lowrank", "galore", "galore8bit",
               "golore", "sumo", "gradnormlorp", "gradnormlorp8bit")
RANKS = {"llama-60m": 128, "llama-130m": 256, "llama-350m": 256, "llama-1b": 512, "llama-3b": 512,
         "llama-7b": 1024, "llama-13b": 1024, "gpt2": 16, "opt-1.3b": 16, "roberta-base": 16, "mistral-7b": 16,
         "llama3-8b": 16, "qwen2.5-7b": 16, "qwen3-8b": 16, "qwen3-0.6b": 16}

ON_OFF = ((False, False), (False, True), (True, False), (True, True))  # (layerwise, checkpointing)
PLAIN = ((False, False), (True, True))

# (model, device, precision, batch, seq, methods, (layerwise, checkpointing) pairs)
# The small grid is sized to finish in about half an hour on a 2-core CPU: the 60m model
# gets every combination for real; a 7B fake point takes ~3 minutes, so 7B gets the
# configurations its users run (the layer-wise GaLore family).
_SMALL = [
    ("llama-60m", "cpu", "fp32", 1, 64, ALL_METHODS, ON_OFF),
    ("llama-130m", "cpu", "fp32", 1, 64, ALL_METHODS, ((False, False),)),
    ("llama-1b", "fake", "bf16", 1, 256, ALL_METHODS, ((False, False),)),
    ("llama-7b", "fake", "bf16", 1, 256, ("galore8bit",), ((True, False),)),
]
_FULL = [
    ("llama-60m", "cpu", "fp32", 1, 64, ALL_METHODS, ON_OFF),
    ("llama-130m", "cpu", "fp32", 1, 64, ALL_METHODS, ON_OFF),
    ("llama-60m", "fake", "bf16", 4, 256, ALL_METHODS, ON_OFF),
    ("llama-1b", "fake", "bf16", 1, 256, ALL_METHODS, ON_OFF),
    ("llama-7b", "fake", "bf16", 1, 256, ALL_METHODS, ON_OFF),
    ("llama-13b", "fake", "bf16", 1, 512, ("galore", "galore8bit", "golore", "sumo"), PLAIN),
]
# the CI subset: a 2-block model of llama-60m's widths, every method and combination, fake
_CI = [("llama-60m", "fake", "bf16", 1, 32, ALL_METHODS, ON_OFF)]

# (method, impl) pairs run with the real libraries on transformers' LlamaForCausalLM
# (memplan/measure/libs.py): real CPU steps on llama-60m, and llama-1b under FakeTensorMode in
# bf16 at 1 x 512 (the CUDA points of benchmarks/cuda_check.py). galore-torch's 8-bit optimizer
# cannot run under fake tensors (bitsandbytes reads a tensor norm as a float) and bitsandbytes'
# CPU kernel is not its CUDA kernel, so each runs where it means something.
LIBRARY_PAIRS = ("adamw:torch-foreach", "adamw:torch-fused", "adamw:torch-forloop", "sgd:torch",
                 "sgd:torch@momentum=0.9", "adafactor:transformers", "adafactor:transformers@beta1=0.9",
                 "galore:galore-torch", "lora:peft")
_IMPLS = [
    ("llama-60m", "cpu", "fp32", 1, 64, LIBRARY_PAIRS + ("galore8bit:galore-torch",), ((False, False),)),
    ("llama-60m", "cpu", "fp32", 1, 64, ("adamw:torch-foreach", "galore:galore-torch", "galore8bit:galore-torch"),
     ((True, False),)),
    ("llama-1b", "fake", "bf16", 1, 512, LIBRARY_PAIRS + ("adam8bit:bitsandbytes",), ((False, False),)),
]


# Hugging Face classes, fake, bf16: (model, batch, seq, method:impl pairs, settings). Each settings
# dict is ValidateConfig fields; the dropouts not named are the model config's.
SDPA, EAGER = {"attn": "sdpa"}, {"attn": "eager"}
NO_DROPOUT = {"attn_dropout": 0.0, "hidden_dropout": 0.0}
_FAMILIES = [
    ("llama-1b", 4, 1024, ("adamw:torch-forloop",),
     (SDPA, EAGER, {**SDPA, "attn_dropout": 0.1}, {**EAGER, "attn_dropout": 0.1})),
    ("llama-1b", 4, 512, ("lora:peft",), (SDPA, {**SDPA, "lora_dropout": 0.05}, {**EAGER, "lora_dropout": 0.05})),
    ("gpt2", 4, 1024, ("adamw:torch-forloop",), (SDPA, EAGER, {**SDPA, **NO_DROPOUT}, {**EAGER, **NO_DROPOUT})),
    ("gpt2", 4, 1024, ("lora:peft",), ({**SDPA, "lora_dropout": 0.05},)),
    ("opt-1.3b", 4, 1024, ("adamw:torch-forloop",), (SDPA, EAGER)),
    ("opt-1.3b", 4, 512, ("lora:peft",), (SDPA, {**SDPA, "lora_dropout": 0.05})),
    ("roberta-base", 4, 512, ("adamw:torch-forloop",), (SDPA, EAGER, {**SDPA, "attn_dropout": 0.0})),
    ("mistral-7b", 4, 512, ("lora:peft",), (SDPA,)),
    ("llama3-8b", 4, 512, ("lora:peft",), (SDPA,)),
    ("qwen2.5-7b", 4, 512, ("adamw:torch-forloop", "lora:peft"), (SDPA,)),
    ("qwen3-8b", 4, 512, ("adamw:torch-forloop", "lora:peft"), (SDPA, EAGER)),
    # autocast with checkpointing: the cached bf16 weight copies hold the forward's moment
    ("llama-1b", 4, 512, ("adamw:torch-forloop",), ({**SDPA, "precision": "mixed", "checkpointing": True},)),
    ("qwen3-0.6b", 4, 512, ("lora:peft",), ({**SDPA, "precision": "mixed", "checkpointing": True},)),
]


def family_points(methods=None) -> list[ValidateConfig]:
    """The Hugging Face class points of every family (``_FAMILIES``)."""
    out = []
    for model, b, s, pairs, settings in _FAMILIES:
        for pair, extra in itertools.product(pairs, settings):
            if methods and pair.partition(":")[0] not in methods:
                continue
            out.append(ValidateConfig(**{"model": model, "rank": RANKS[model], "batch_size": b, "seq_len": s,
                                         "device": "fake", **_pair(pair), "implementation": "hf", **extra}))
    return out


def _pair(spec: str) -> dict:
    """'method', 'method:impl' or 'method:impl@knob=value' as ValidateConfig fields (a bare method:
    the bundled model and optimizers)."""
    method, _, rest = spec.partition(":")
    out = {"method": method, "implementation": "bundled"}
    if rest:
        impl, _, knob = rest.partition("@")
        out.update(impl=impl, implementation="hf")
        if knob:
            key, _, value = knob.partition("=")
            out[key] = "none" if value == "none" else float(value)
    return out


def grid(name: str, methods=None) -> list[ValidateConfig]:
    rows = {"small": _SMALL + _IMPLS, "full": _FULL + _IMPLS, "ci": _CI, "impls": _IMPLS, "families": []}.get(name)
    if rows is None:
        raise ValueError(f"Unknown grid {name!r}; expected 'small', 'full', 'impls', 'families' or 'ci'")
    out = []
    for model, device, prec, b, s, ms, combos in rows:
        for method, (lw, ckpt) in itertools.product(methods or ms, combos):
            out.append(ValidateConfig(**{"model": model, "rank": RANKS[model], "precision": prec, "batch_size": b,
                                         "seq_len": s, "layerwise": lw, "checkpointing": ckpt, "device": device,
                                         **_pair(method)}))
    if name in ("small", "full", "families"):
        out += family_points(methods)
    return out


def run_grid(configs, progress=None, on_result=None):
    """Validate every config; a config that raises is recorded as a failure."""
    results = []
    for cfg in configs:
        try:
            v = validate(cfg).to_dict()
        except Exception as e:  # keep going: one broken point must not hide the others
            v = {"config": _cfg_dict(cfg), "passed": False, "failures": [f"{type(e).__name__}: {e}"],
                 "error": None, "estimate": None, "measured": None, "seconds": 0}
        results.append(v)
        if on_result is not None:
            on_result(v)
        if progress is not None:
            progress(1)
    return results


def _cfg_dict(cfg):
    from dataclasses import asdict
    d = asdict(cfg)
    d["target_modules"] = list(d["target_modules"]) if d["target_modules"] else None
    return d


def impl_label(cfg: dict) -> str:
    """The implementation a grid point measured: its `impl`, else the bundled build."""
    from memplan.measure.validate import BUNDLED_AS
    impl = cfg.get("impl") or BUNDLED_AS.get(cfg["method"], "bundled")
    knobs = [f"{k} {cfg[k]}" for k in ("momentum", "beta1") if cfg.get(k) is not None]
    return impl + (f" ({', '.join(knobs)})" if knobs else "")


def family_of(cfg: dict) -> str:
    """The model family of a grid point (its profile's `family`; hf/bundled model class noted)."""
    from memplan.profiles import load_model
    try:
        fam = load_model(cfg["model"]).family
    except Exception:  # a profile passed as an object or no longer present: group by its name
        fam = str(cfg["model"])
    return f"{fam} ({cfg.get('implementation', 'bundled')} model)"


def summarize(results, by: str = "impl") -> list[dict]:
    """Worst and median error per category and of the peak, and pass counts, per group.

    ``by="impl"``: per (method, implementation); ``by="family"``: per model family. The exact
    categories are in bytes (|estimate - measured|). Activations and transients (gradients and
    temporaries alive at the peak, see ``validate.peak_shares``) are a share of the measured
    peak (a relative error of a category that holds a few bytes at the peak says nothing), the
    peak relative to itself.
    """
    from memplan.measure.validate import peak_shares
    groups: dict[tuple, list] = {}
    for r in results:
        c = r["config"]
        key = (c["method"], impl_label(c)) if by == "impl" else (family_of(c),)
        groups.setdefault(key, []).append(r)
    rows = []
    for key, rs in groups.items():
        ok = [r for r in rs if r["error"]]
        row = ({"method": key[0], "impl": key[1]} if by == "impl" else {"family": key[0]})
        row.update(points=len(rs), passed=sum(r["passed"] for r in rs))
        for c in EXACT:
            errs = [abs(r["error"]["categories"][c]["bytes"]) for r in ok]
            row[c] = (max(errs), _median(errs, True)) if errs else (None, None)
        for c in ("activations", "transients"):
            errs = [abs((r["error"].get("shares") or peak_shares(r["estimate"], r["measured"]))[c]) for r in ok]
            row[c] = (max(errs), _median(errs, False)) if errs else (None, None)
        peaks = [abs(r["error"]["peak"]["relative"]) for r in ok]
        row["peak"] = (max(peaks), _median(peaks, False)) if peaks else (None, None)
        row["phase_match"] = sum(r["error"]["peak_phase_match"] for r in ok)
        rows.append(row)
    return rows


def _median(values, integer):
    m = statistics.median(values)
    return int(m) if integer else m


__all__ = ["grid", "run_grid", "summarize", "ALL_METHODS", "RANKS", "replace"]
