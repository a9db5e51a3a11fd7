"""Build the optimizer (and adapters) of one implementation with the real third-party library.

`memplan validate --impl X` measures what users run: `torch.optim.AdamW` with
`foreach=True` / `fused=True` / `foreach=False` (torch runs all three on CPU tensors, so
CUDA's default path is measured here), `torch.optim.SGD`, `transformers`' Adafactor,
`bitsandbytes.optim.AdamW8bit`, `galore_torch.GaLoreAdamW` / `GaLoreAdamW8bit` and `peft`
LoRA, each built the way its README or recipe builds it. `bundled` builds memplan's own.

Where a library does not run here, say so:
- bitsandbytes on CPU runs its CPU kernel (`backends/cpu/ops.py`: dequantized fp32 copies
  of both moments, of the gradient and of the weight); its CUDA kernel updates in place.
  Under FakeTensorMode the op's fake registration allocates nothing, as the CUDA kernel.
- Under FakeTensorMode, bitsandbytes builds its quantization maps with `.tolist()` (data
  dependent): the two 256-entry fp32 maps are made as zeros of the same size there (their
  values do not change memory). peft moves each new adapter to the base layer's device and
  dtype with `Module.to` (which cannot swap fake parameters) and then upcasts it to fp32:
  under fake tensors (all on the CPU) `Module.to` is the identity while peft injects, so the
  adapters are created in fp32 and stay there, the dtype peft leaves them in.
- galore-torch's `GaLoreAdamW8bit.step` calls `torch.cuda.synchronize()` after each update;
  without CUDA that call raises, so it is made a no-op while the optimizer steps (it only
  orders work, it allocates nothing).
"""
from __future__ import annotations

import contextlib

import torch

LIBRARY_IMPLS = {"torch-foreach", "torch-fused", "torch-forloop", "torch", "transformers", "bitsandbytes",
                 "galore-torch", "peft", "peft-bitsandbytes",
                 "apollo-torch", "fira", "q-galore-torch-bf16"}  # last 3: libs_recent.py


def uses_library(impl: str) -> bool:
    return impl in LIBRARY_IMPLS


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _galore_groups(model, rank: int, update_gap: int, target_modules):
    """The GaLore README's groups: the non-projected parameters first, then the projected ones."""
    from memplan.optim.groups import split_parameters
    projected, other = split_parameters(model, target_modules)
    return [{"params": [p for _, p in other]},
            {"params": [p for _, p in projected], "rank": rank, "update_proj_gap": update_gap, "scale": 0.25,
             "proj_type": "std"}]


@contextlib.contextmanager
def no_cuda_sync():
    if torch.cuda.is_available():
        yield
        return
    real = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        yield
    finally:
        torch.cuda.synchronize = real


def _patch_step(opt):
    step = opt.step

    def wrapped(*a, **k):
        with no_cuda_sync():
            return step(*a, **k)
    opt.step = wrapped
    return opt


def _is_fake(model) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return any(isinstance(p, FakeTensor) for p in model.parameters())


@contextlib.contextmanager
def _adapters_created_in_fp32():
    to = torch.nn.Module.to
    torch.nn.Module.to = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.nn.Module.to = to


def _fake_qmaps(opt_cls):
    """bitsandbytes optimizers under FakeTensorMode: 256-entry fp32 maps made as zeros."""
    def fill_qmap(self):
        self.name2qmap["dynamic"] = torch.zeros(256, dtype=torch.float32)
        self.name2qmap["udynamic"] = torch.zeros(256, dtype=torch.float32)
    return type(opt_cls.__name__, (opt_cls,), {"fill_qmap": fill_qmap})


def apply_peft_lora(model, rank: int, target_modules, train_non_target: bool = False, lora_dropout: float = 0.0):
    """peft LoRA on `model` (lora_alpha = 2 r, adapters in fp32 under a bf16 base as peft casts them);
    returns the PeftModel."""
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=lora_dropout, target_modules=list(target_modules))
    with _adapters_created_in_fp32() if _is_fake(model) else contextlib.nullcontext():
        model = get_peft_model(model, cfg)
    if train_non_target:
        for name, p in model.named_parameters():
            if "lora_" not in name and not any(f".{t}." in name for t in target_modules):
                p.requires_grad_(True)
    return model


def quantize_nf4(model, target_modules, compute_dtype) -> None:
    """QLoRA's base: each target linear becomes bitsandbytes' `Linear4bit` (NF4, blocks of 64, double
    quantization), as `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True,
    bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True))` makes it; quantized on the weight's
    device (bitsandbytes' CPU backend here). The full-precision weight is dropped."""
    import bitsandbytes as bnb

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and any(n == t or n.endswith("." + t) for t in target_modules)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                              device="meta")
        q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4",
                                     compress_statistics=True, blocksize=64).to(lin.weight.device)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
        setattr(parent, child, q)


def build_library_optimizer(model, impl: str, method: str, *, rank: int, update_gap: int, layerwise: bool,
                            target_modules=None, momentum: float | None = None, beta1="default"):
    """The real library's optimizer for `impl` (see the module doc), wrapped per layer if asked."""
    from memplan.optim.layerwise import LayerwiseOptimizer
    from memplan.measure import libs_recent
    if impl in libs_recent.RECENT_IMPLS:
        return libs_recent.model_optimizer(model, impl, method, rank=rank, update_gap=update_gap,
                                           target_modules=target_modules, layerwise=layerwise)
    if impl in ("torch-foreach", "torch-fused", "torch-forloop", "peft"):
        flag = {"torch-foreach": {"foreach": True}, "torch-fused": {"fused": True},
                "torch-forloop": {"foreach": False}, "peft": {"foreach": True}}[impl]
        cls, kw, params = torch.optim.AdamW, dict(lr=1e-3, **flag), _trainable(model)
    elif impl == "torch":
        cls, kw, params = torch.optim.SGD, dict(lr=1e-2, momentum=momentum or 0.0), _trainable(model)
    elif impl == "transformers":
        from transformers.optimization import Adafactor
        kw = dict(lr=1e-3, relative_step=False, scale_parameter=False, warmup_init=False)
        if beta1 != "default":
            kw["beta1"] = beta1
        cls, params = Adafactor, _trainable(model)
    elif impl == "bitsandbytes":
        import bitsandbytes as bnb
        cls, kw, params = bnb.optim.AdamW8bit, dict(lr=1e-3), _trainable(model)
    elif impl == "peft-bitsandbytes":  # QLoRA's optimizer (on the CPU its pages are ordinary buffers)
        import warnings

        import bitsandbytes as bnb
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
        cls, kw, params = bnb.optim.PagedAdamW8bit, dict(lr=1e-4), _trainable(model)
    elif impl == "galore-torch":
        from galore_torch import GaLoreAdamW, GaLoreAdamW8bit
        cls = GaLoreAdamW if method == "galore" else GaLoreAdamW8bit
        kw, params = dict(lr=1e-2), _galore_groups(model, rank, update_gap, target_modules)
    else:
        raise ValueError(f"{impl!r} is not a library implementation; expected one of {sorted(LIBRARY_IMPLS)}")
    if impl in ("bitsandbytes", "galore-torch") and _is_fake(model):
        cls = _fake_qmaps(cls) if impl == "bitsandbytes" or method == "galore8bit" else cls
    opt = LayerwiseOptimizer(params, cls, **kw) if layerwise else cls(params, **kw)
    if impl == "galore-torch" and method == "galore8bit":
        if layerwise:
            for sub in opt.optimizers:
                _patch_step(sub)
        else:
            _patch_step(opt)
    return opt
