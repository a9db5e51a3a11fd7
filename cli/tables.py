"""Tables for the CLI (tabulate). Bytes are shown in GiB (2**30 bytes)."""
from __future__ import annotations

import json

from tabulate import tabulate

from memplan.categories import CATEGORIES, PHASES
from memplan.estimator import UNKNOWN_USABLE_MARGIN, Estimate, capacity_bytes
from memplan.methods import METHODS
from memplan.profiles import load_gpus, load_model, model_names
from memplan.inventory import parameter_count
from memplan.units import GiB, fmt_count


def g(n: int) -> str:
    return f"{n / GiB:,.2f}"


def describe_config(est: Estimate) -> str:
    c = est.config
    m = METHODS[c.method]
    parts = [c.model.name, f"{fmt_count(est.parameter_count)} params"]
    if est.trainable_count != est.parameter_count:
        parts[-1] += f" ({fmt_count(est.trainable_count)} trainable)"
    meth = c.method + (f" rank {c.rank}" if m.uses_rank else "")
    parts += [meth, _impl_part(est), c.precision, f"batch {c.batch_size} x seq {c.seq_len}"]
    from memplan.estimator import weight_format

    if weight_format(c) != "bf16":
        parts.insert(parts.index(c.precision) + 1, f"{weight_format(c)} weights")
    if c.offload != "none":
        parts.append(f"offload {c.offload}")
    if c.loss != "standard":
        parts.append(f"{c.loss} loss" + (f" (chunk {c.loss_chunk})" if c.loss_chunk else ""))
    if c.layerwise:
        parts.append("per-layer update")
    if c.checkpointing:
        parts.append("checkpointing")
    parts.append(model_knobs(est))
    return " | ".join(parts)


def _impl_part(est: Estimate) -> str:
    """The implementation the numbers model, with the options that change its memory."""
    impl, kn = est.impl, est.knobs
    text = f"impl {impl.name}"
    if est.config.method == "sgd":
        text += f", momentum {kn.momentum:g}"
    if est.config.method == "adafactor":
        text += ", no first moment" if kn.beta1 is None else f", beta1 {kn.beta1:g}"
    return text


def model_knobs(est: Estimate) -> str:
    """'sdpa attention, dropout attn 0 / hidden 0.1': the model settings the activations follow."""
    k = est.model_knobs
    text = f"{k['attn']} attention, dropout attn {k['attn_dropout']:g}"
    if k["hidden_dropout"] is not None:  # None: the model's class has no residual dropout (LLaMA family)
        text += f" / hidden {k['hidden_dropout']:g}"
    if METHODS[est.config.method].adapter:
        text += f" / lora {k['lora_dropout']:g}"
    return text


def estimate_table(est: Estimate, host_ram: int | None = None) -> str:
    peak = est.peak_phase
    headers = ["GiB"] + [p + (" *" if p == peak else "") for p in PHASES]
    rows = []
    for cat in CATEGORIES[:-1]:
        rows.append([cat] + [g(est.phases[p][cat]) for p in PHASES])
    rows.append(["allocated"] + [g(sum(est.phases[p].values())) for p in PHASES])
    lines = [describe_config(est), "", tabulate(rows, headers, tablefmt="simple", disable_numparse=True,
                                                colalign=("left",) + ("right",) * len(PHASES)), ""]
    lines.append(f"Peak allocated: {g(est.peak_bytes)} GiB in the {peak} phase (* above)")
    ctx = est.device_total_bytes - est.reserved_bytes
    lines.append(f"Device total:   {g(est.device_total_bytes)} GiB "
                 f"(+ {g(est.reserved_bytes - est.peak_bytes)} GiB allocator fragmentation and cuBLAS workspaces, "
                 f"{g(ctx)} GiB CUDA context)")
    if est.host_bytes:
        lines.append(f"Host memory:    {g(est.host_bytes)} GiB (pinned weight and gradient copies "
                     f"{g(est.host_pinned_bytes)} GiB + optimizer state; --offload {est.config.offload})")
    if host_ram is not None:
        ok = est.host_bytes <= host_ram
        lines.append(f"Host RAM:       {'fits' if ok else 'DOES NOT FIT'} in {g(host_ram)} GiB (--host-ram); "
                     + (f"headroom {g(host_ram - est.host_bytes)} GiB" if ok else
                        f"short by {g(est.host_bytes - host_ram)} GiB"))
    if est.gpu is not None:
        fit = est.fit(host_ram=host_ram)
        cap = f"{fit.gpu.name}, {g(fit.capacity_bytes)} GiB usable"
        if fit.headroom_bytes >= 0 and not fit.host_fits:
            lines.append(f"Verdict:        DOES NOT FIT: the GPU has {g(fit.headroom_bytes)} GiB headroom ({cap}) "
                         "but the host RAM is short (above)")
        elif fit.fits:
            lines.append(f"Verdict:        FITS on {cap}; headroom {g(fit.headroom_bytes)} GiB")
        else:
            lines.append(f"Verdict:        DOES NOT FIT on {cap}; short by {g(-fit.headroom_bytes)} GiB")
            hints = [h for h, on in (("--layerwise", est.config.layerwise),
                                     ("--checkpointing", est.config.checkpointing)) if not on]
            if hints:
                lines.append(f"                try {' or '.join(hints)}, a smaller batch, or 'memplan advise' "
                             "(the changes that make it fit)")
    return "\n".join(lines)


def models_table(as_json: bool = False) -> str:
    rows = []
    for name in sorted(model_names(), key=lambda n: (load_model(n).family, parameter_count(n))):
        p = load_model(name)
        rows.append({"name": name, "family": p.family, "parameters": parameter_count(p), "layers": p.num_hidden_layers,
                     "hidden": p.hidden_size, "heads": p.num_attention_heads, "kv_heads": p.num_key_value_heads,
                     "vocab": p.vocab_size, "description": p.description})
    if as_json:
        return json.dumps(rows, indent=2)
    table = [[r["name"], r["family"], f"{r['parameters']:,}", r["layers"], r["hidden"],
              f"{r['heads']}/{r['kv_heads']}", r["vocab"], r["description"]] for r in rows]
    return tabulate(table, ["model", "family", "parameters", "layers", "hidden", "heads/kv", "vocab", "description"],
                    disable_numparse=True)


def gpus_table(gpu_file=None, as_json: bool = False, sources: bool = False) -> str:
    gpus = load_gpus(gpu_file)
    if as_json:
        from dataclasses import asdict

        return json.dumps([{**asdict(gp), "capacity_bytes": capacity_bytes(gp)} for gp in gpus.values()], indent=2)
    ordered = sorted(gpus.values(), key=lambda x: (x.memory_mib, x.id))
    if sources:  # where each figure comes from, in full
        return "\n\n".join(f"{gp.id} ({gp.name})\n  memory: {gp.memory_source}"
                            + (f"\n  price ({gp.price_date}): {gp.price_source}" if gp.price_source else "")
                            for gp in ordered)
    price = lambda v, fmt: "" if v is None else fmt.format(v)  # noqa: E731
    rows = [[gp.id, gp.name, gp.memory_mib, g(capacity_bytes(gp)),
             "measured" if gp.usable_mib else f"MiB -{UNKNOWN_USABLE_MARGIN:.0%}",
             price(gp.price_per_hour_usd, "${:.2f}"), price(gp.price_purchase_usd, "${:,.0f}"), gp.price_date]
            for gp in ordered]
    table = tabulate(rows, ["id", "name", "nvidia-smi MiB", "usable GiB", "usable from", "$/hour", "purchase",
                            "price date"], disable_numparse=True,
                     colalign=("left", "left", "right", "right", "left", "right", "right", "left"))
    return (table + "\n\nusable: what CUDA can allocate; 'measured' is a published cudaMemGetInfo / PyTorch total, "
            f"'MiB -{UNKNOWN_USABLE_MARGIN:.0%}' the nvidia-smi figure less a margin.\n"
            "Where each memory figure and price comes from: memplan gpus --sources")


def _impl_names(method: str) -> list[str]:
    from memplan.impls import impls_of

    names = list(impls_of(method))
    default = METHODS[method].default_impl
    return [default] + [n for n in names if n != default]


def methods_table(as_json: bool = False) -> str:
    from memplan.impls import impls_of

    if as_json:
        return json.dumps([{"name": m.name, "description": m.description, "paper": m.paper,
                            "uses_rank": m.uses_rank, "default_impl": m.default_impl,
                            "impls": [{"name": i.name, "library": i.library, "description": i.description}
                                      for i in (impls_of(m.name)[n] for n in _impl_names(m.name))]}
                           for m in METHODS.values()], indent=2)
    rows = [[m.name, ", ".join(f"{n} (default)" if n == m.default_impl else n for n in _impl_names(m.name)),
             m.description, m.paper] for m in METHODS.values()]
    lines = [tabulate(rows, ["method", "implementations (--impl)", "description", "paper"])]
    lines.append("\nImplementations (what each --impl models):")
    for m in METHODS.values():
        for n in _impl_names(m.name):
            i = impls_of(m.name)[n]
            lines.append(f"  {m.name:17s} {n:14s} {i.library}: {i.description}")
    return "\n".join(lines)
