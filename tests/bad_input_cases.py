"""The bad-input corpus: hostile or mistaken inputs and what memplan must answer.

Shared by tests/test_bad_input.py (each case's message and exit code, through the
CLI, the library and the dashboard) and benchmarks/bad_input.py (each case's time
and peak memory). A case never needs a network or a GPU.

CLI cases: `args` use `{d}` for the folder the corpus files are written to; `code`
is the exit status (2: bad input, 3: nothing fits); `message` must be in the last
line printed, a one-line `Error: ...` (click's own usage errors too, with where the
help is).
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field

LLAMA = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
         "num_hidden_layers": 32, "vocab_size": 32000, "max_position_embeddings": 2048}
GPT2 = {"model_type": "gpt2", "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257}
BERT = {"model_type": "bert", "hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12,
        "intermediate_size": 3072, "vocab_size": 30522}
OPT = {"model_type": "opt", "hidden_size": 768, "ffn_dim": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
       "vocab_size": 50272}
MIXTRAL = {**LLAMA, "model_type": "mixtral", "intermediate_size": 14336, "num_key_value_heads": 8,
           "num_local_experts": 8, "num_experts_per_tok": 2}


def _j(base: dict, **changes) -> bytes:
    return json.dumps({**base, **changes}).encode()


_EVENT = {"action": "alloc", "addr": 1, "size": 512, "stream": 0, "frames": []}
_SEGMENT = {"device": 0, "address": 0, "total_size": -10**15, "allocated_size": 0, "active_size": 0, "stream": 0,
            "segment_type": "large", "blocks": [{"size": -10**15, "state": "active_allocated", "address": 0}]}


class _RunsCode:
    """Unpickling this would run os.getpid: a stand-in for a malicious snapshot."""

    def __reduce__(self):
        import os

        return (os.getpid, ())


# name -> bytes, written to the corpus folder
FILES: dict[str, bytes] = {
    # a 22 KB pickle repeating one event list by reference: 10^7 events (issue 11's CPU DoS)
    "snapshot_memo.pickle": pickle.dumps({"segments": [], "device_traces": [[_EVENT] * 1000] * 10_000}),
    "snapshot_negative.pickle": pickle.dumps({"segments": [_SEGMENT], "device_traces": [[]]}),
    "snapshot_code.pickle": pickle.dumps(_RunsCode()),
    "snapshot_text.pickle": b"not a pickle at all",
    "layers_1e6.json": _j(LLAMA, num_hidden_layers=10**6),
    "layers_1e7.json": _j(LLAMA, num_hidden_layers=10**7),
    "layers_1e12.json": _j(LLAMA, num_hidden_layers=10**12),
    "hidden_2e40.json": _j(LLAMA, hidden_size=2**40),
    "vocab_1e15.json": _j(LLAMA, vocab_size=10**15),
    "positions_1e12.json": _j(BERT, max_position_embeddings=10**12),
    "tie_string.json": _j(LLAMA, tie_word_embeddings="false"),
    "eps_string.json": _j(LLAMA, rms_norm_eps="1e-6"),
    "theta_string.json": _j(LLAMA, rope_theta="10000"),
    "layers_string.json": _j(LLAMA, num_hidden_layers="32"),
    "layers_float.json": _j(LLAMA, num_hidden_layers=1.5),
    "layers_bool.json": _j(LLAMA, num_hidden_layers=True),
    "gpt2_inner_string.json": _j(GPT2, n_inner="3072"),
    "gpt2_inner_negative.json": _j(GPT2, n_inner=-5),
    "bert_types_string.json": _j(BERT, type_vocab_size="2"),
    "bert_types_negative.json": _j(BERT, type_vocab_size=-10**12),
    "opt_proj_negative.json": _j(OPT, word_embed_proj_dim=-1),
    "heads_zero.json": _j(LLAMA, num_attention_heads=0),
    "heads_indivisible.json": _j(LLAMA, num_attention_heads=31),
    "quantized.json": _j(LLAMA, quantization_config={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}),
    "cross_attention.json": _j(GPT2, add_cross_attention=True),
    "encoder_decoder.json": _j(LLAMA, is_encoder_decoder=True),
    "mistral_experts.json": _j(LLAMA, model_type="mistral", num_local_experts=8, num_experts_per_tok=2),
    "mixtral_topk.json": _j(MIXTRAL, num_experts_per_tok=9),
    "mixtral_jitter.json": _j(MIXTRAL, router_jitter_noise=0.1),
    "mixtral_aux_loss.json": _j(MIXTRAL, output_router_logits=True),
    "head_dim.json": _j(BERT, head_dim=256),  # LLaMA-style configs model it (Mistral-NeMo); others refuse
    "bert_relative.json": _j(BERT, position_embedding_type="relative_key"),
    "qwen2_window.json": _j(LLAMA, model_type="qwen2", use_sliding_window=True, sliding_window=4096),
    "model_type_number.json": _j(LLAMA, model_type=12),
    "t5.json": _j({"model_type": "t5", "d_model": 512}),
    "list.json": b"[1, 2, 3]",
    "empty.json": b"",
    "truncated.json": _j(LLAMA)[:40],
    "binary.json": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary",
    "latin1.json": '{"model_type": "llama", "name": "caf\xe9"}'.encode("latin-1"),
    "nested.json": b"[" * 100_000 + b"]" * 100_000,
    "nan.json": _j(LLAMA)[:-1] + b', "rms_norm_eps": NaN}',
    "infinity.json": _j(LLAMA)[:-1] + b', "rope_theta": 1e999}',
    "digits.json": _j(LLAMA)[:-1] + b', "vocab_size": ' + b"9" * 5000 + b"}",
    "big.json": _j(LLAMA)[:-1] + b', "pad": "' + b"x" * (2 << 20) + b'"}',
    "gpus_huge_mib.toml": b'[big]\nname = "Big"\nmemory_mib = 1000000000000000000000000000000\nmemory_source = "x"\n',
    "gpus_nan_price.toml": b'[rtx-4090]\nprice_per_hour_usd = nan\n',
    "gpus_nested.json": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "gpus_nested.toml": b"[g]\nname = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "gpus_binary.toml": b"\xff\xfe\x00binary",
    "gpus_many.toml": "".join(f'[g{i}]\nname = "G"\nmemory_mib = 1024\nmemory_source = "x"\n'
                              for i in range(2000)).encode(),
    "gpus_string_mib.toml": b'[my-gpu]\nname = "My GPU"\nmemory_mib = "24GB"\nmemory_source = "x"\n',
}


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    message: str
    code: int = 2


def _est(file: str) -> tuple[str, ...]:
    return ("estimate", "--model", "{d}/" + file)


CLI: list[Case] = [
    # sizes out of bounds: refused at once, naming the key, the bound and why
    Case("layers 10^6", _est("layers_1e6.json"), "'num_hidden_layers' must be between 1 and 256"),
    Case("layers 10^7", _est("layers_1e7.json"), "'num_hidden_layers' must be between 1 and 256"),
    Case("layers 10^12", _est("layers_1e12.json"), "under 200 layers"),
    Case("plan on 10^12 layers", ("plan", "--model", "{d}/layers_1e12.json"), "'num_hidden_layers'"),
    Case("hidden 2^40", _est("hidden_2e40.json"), "'hidden_size' must be between 1 and 131,072"),
    Case("vocabulary 10^15", _est("vocab_1e15.json"), "'vocab_size' must be between"),
    Case("positions 10^12", _est("positions_1e12.json"), "'max_position_embeddings' must be between"),
    # types: a string is not a number or a boolean
    Case("tie_word_embeddings 'false'", _est("tie_string.json"), "'tie_word_embeddings' must be true or false"),
    Case("rms_norm_eps string", _est("eps_string.json"), "'rms_norm_eps' must be a number, got the string"),
    Case("rope_theta string", _est("theta_string.json"), "'rope_theta' must be a number, got the string"),
    Case("layers string", _est("layers_string.json"), "'num_hidden_layers' must be a number, got the string"),
    Case("layers float", _est("layers_float.json"), "'num_hidden_layers' must be an integer"),
    Case("layers bool", _est("layers_bool.json"), "'num_hidden_layers' must be an integer"),
    Case("n_inner string", _est("gpt2_inner_string.json"), "'n_inner' must be a number, got the string"),
    Case("type_vocab_size string", _est("bert_types_string.json"), "'type_vocab_size' must be a number"),
    # negative and zero sizes
    Case("n_inner negative", _est("gpt2_inner_negative.json"), "'n_inner' must be between 1 and"),
    Case("type_vocab_size negative", _est("bert_types_negative.json"), "'type_vocab_size' must be between 0 and"),
    Case("word_embed_proj_dim negative", _est("opt_proj_negative.json"), "'word_embed_proj_dim' must be between"),
    Case("zero heads", _est("heads_zero.json"), "'num_attention_heads' must be between 1 and"),
    Case("heads do not divide", _est("heads_indivisible.json"), "not divisible by the number of attention heads"),
    # architecture features that are not modelled: refused, naming the key
    Case("quantization_config", _est("quantized.json"), "'quantization_config'"),
    Case("cross-attention", _est("cross_attention.json"), "'add_cross_attention'"),
    Case("encoder-decoder", _est("encoder_decoder.json"), "'is_encoder_decoder'"),
    Case("experts under mistral", _est("mistral_experts.json"), "'num_local_experts'"),
    Case("top-k above experts", _est("mixtral_topk.json"), "'num_experts_per_tok' (9) is larger"),
    Case("router jitter", _est("mixtral_jitter.json"), "'router_jitter_noise'"),
    Case("router aux loss", _est("mixtral_aux_loss.json"), "'output_router_logits'"),
    Case("head_dim", _est("head_dim.json"), "'head_dim'"),
    Case("relative positions", _est("bert_relative.json"), "'position_embedding_type'"),
    Case("model_type number", _est("model_type_number.json"), "unsupported model_type '12'"),
    Case("t5", _est("t5.json"), "unsupported model_type 't5'"),
    Case("MoE in mixed precision", ("estimate", "--model", "mixtral-8x7b", "--precision", "mixed"),
         "only --precision bf16"),
    Case("sequence past the window", ("estimate", "--model", "mistral-7b", "--seq-len", "8192"),
         "'sliding_window' = 4,096"),
    # files that are not a config
    Case("JSON list", _est("list.json"), "expected a JSON object"),
    Case("empty file", _est("empty.json"), "is not valid JSON"),
    Case("truncated JSON", _est("truncated.json"), "is not valid JSON"),
    Case("binary file", _est("binary.json"), "is not UTF-8 text"),
    Case("latin-1 file", _est("latin1.json"), "is not UTF-8 text"),
    Case("deeply nested JSON", _est("nested.json"), "nested too deeply"),
    Case("NaN", _est("nan.json"), "NaN is not a number JSON allows"),
    Case("1e999", _est("infinity.json"), "'rope_theta' must be a finite number"),
    Case("5,000 digits", _est("digits.json"), "is not valid JSON"),
    Case("2 MiB config", _est("big.json"), "memplan reads at most 1,048,576"),
    Case("no config.json there", ("estimate", "--model", "{d}/missing/config.json"), "No config.json at"),
    # CLI options
    Case("--method ''", ("estimate", "--model", "llama-7b", "--method", ""), "Unknown method ''"),
    Case("--model ''", ("estimate", "--model", ""), "No model given"),
    Case("--model ' '", ("fit", "--model", " ", "--gpu", "rtx-4090"), "No model given"),
    Case("typo among target modules", ("estimate", "--model", "llama-7b", "--method", "lora",
                                       "--target-modules", "q_proj,v_pro"), "Target module 'v_pro'"),
    Case("empty target modules", ("estimate", "--model", "llama-7b", "--method", "lora", "--target-modules", ","),
         "--target-modules is empty"),
    Case("--train-non-target with adamw", ("estimate", "--model", "llama-7b", "--train-non-target"),
         "apply to adapter methods"),
    Case("--freeze-non-target with galore", ("estimate", "--model", "llama-7b", "--method", "galore",
                                             "--freeze-non-target"), "apply to adapter methods"),
    Case("--batch-size 10^21", ("estimate", "--model", "llama-7b", "--batch-size", str(10**21)),
         "Batch size (--batch-size) must be between 1 and 1,048,576"),
    Case("--seq-len 10^9", ("estimate", "--model", "llama-7b", "--seq-len", str(10**9)),
         "Sequence length (--seq-len) must be between"),
    Case("--rank 10^9", ("estimate", "--model", "llama-7b", "--method", "galore", "--rank", str(10**9)),
         "Rank (--rank) must be between"),
    Case("--update-gap 0", ("estimate", "--model", "llama-7b", "--update-gap", "0"), "Update gap must be"),
    Case("--impl ''", ("estimate", "--model", "llama-7b", "--impl", ""), "Unknown implementation ''"),
    Case("--momentum nan", ("estimate", "--model", "llama-7b", "--method", "sgd", "--momentum", "nan"),
         "Momentum must be a number in [0, 1)"),
    Case("--loss-chunk 0", ("estimate", "--model", "llama-7b", "--loss", "fused-chunked", "--loss-chunk", "0"),
         "Loss chunk must be a positive integer"),
    Case("--host-ram inf", ("estimate", "--model", "llama-7b", "--offload", "optimizer", "--host-ram", "inf"),
         "--host-ram (GiB) must be a finite number"),
    Case("--host-ram 1e300", ("estimate", "--model", "llama-7b", "--offload", "optimizer", "--host-ram", "1e300"),
         "--host-ram (GiB) must be a finite number"),
    Case("--rank abc", ("estimate", "--model", "llama-7b", "--rank", "abc"), "is not a valid integer"),
    Case("--precision fp8", ("estimate", "--model", "llama-7b", "--precision", "fp8"), "Invalid value"),
    Case("--gpu local without NVML", ("estimate", "--model", "llama-7b", "--gpu", "local"), "NVIDIA"),
    Case("--gpu local:abc", ("estimate", "--model", "llama-7b", "--gpu", "local:abc"), "Bad local GPU"),
    Case("plan --top 0", ("plan", "--model", "llama-7b", "--top", "0"), "--top must be 1 or more"),
    Case("plan --top -1", ("plan", "--model", "llama-7b", "--top", "-1"), "--top must be 1 or more"),
    Case("plan --layouts ''", ("plan", "--model", "llama-7b", "--layouts", ""), "--layouts is empty"),
    Case("plan --layouts zero9", ("plan", "--model", "llama-7b", "--layouts", "zero9"), "Unknown layout"),
    Case("plan --layerwise --gpu-counts 2", ("plan", "--model", "llama-7b", "--layerwise", "--gpu-counts", "2"),
         "The per-layer update (--layerwise) is single-GPU only"),
    Case("plan --offload --gpu-counts 2", ("plan", "--model", "llama-7b", "--offload", "optimizer", "--gpu-counts", "2"),
         "CPU offload (--offload optimizer) is modeled on one GPU only"),
    Case("estimate --offload --layout ddp", ("estimate", "--model", "llama-7b", "--offload", "optimizer", "--layout",
                                             "ddp", "--num-gpus", "2"),
         "CPU offload (--offload optimizer) is modeled on one GPU only"),
    Case("gpt2 --precision mixed", ("estimate", "--model", "gpt2", "--precision", "mixed"),
         "--precision mixed is modelled for LLaMA-style decoders only"),
    Case("qwen2 use_sliding_window", ("estimate", "--model", "{d}/qwen2_window.json"), "key 'use_sliding_window'"),
    Case("plan --host-ram nan", ("plan", "--model", "llama-7b", "--offload", "optimizer", "--host-ram", "nan"),
         "--host-ram (GiB) must be a finite number"),
    Case("plan --min-headroom nan", ("plan", "--model", "llama-7b", "--min-headroom", "nan"),
         "--min-headroom (GiB) must be a finite number"),
    Case("plan --min-headroom inf", ("plan", "--model", "llama-7b", "--min-headroom", "inf"),
         "--min-headroom (GiB) must be a finite number"),
    Case("plan --min-headroom -1", ("plan", "--model", "llama-7b", "--min-headroom", "-1"),
         "--min-headroom (GiB) must be a finite number"),
    Case("plan --gpu-counts 0", ("plan", "--model", "llama-7b", "--gpu-counts", "0"), "must be between 1 and 4,096"),
    Case("plan --gpu-counts 10^5", ("plan", "--model", "llama-7b", "--gpu-counts", "100000"),
         "must be between 1 and 4,096"),
    Case("plan --gpu-counts 1,x", ("plan", "--model", "llama-7b", "--gpu-counts", "1,x"), "comma-separated"),
    Case("fit --methods ''", ("fit", "--model", "llama-7b", "--gpu", "rtx-4090", "--methods", ""),
         "--methods is empty"),
    Case("compare --methods ,", ("compare", "--model", "llama-7b", "--methods", ","), "--methods is empty"),
    Case("compare --train-non-target, no adapter", ("compare", "--model", "llama-7b", "--methods", "adamw",
                                                   "--train-non-target"), "none of the methods chosen is one"),
    Case("sweep of 4,608 cells", ("sweep", "--model", "llama-7b", "--batch-sizes", ",".join(map(str, range(1, 17))),
                                  "--seq-lens", ",".join(map(str, range(1, 33))), "--ranks", "1,2,3,4,5,6,7,8,9"),
         "at most 4,096 are estimated"),
    Case("sweep of 300 values", ("sweep", "--model", "llama-7b", "--seq-lens", ",".join(map(str, range(1, 301)))),
         "at most 256 are taken"),
    # GPU files
    Case("memory_mib 10^30", ("gpus", "--gpu-file", "{d}/gpus_huge_mib.toml"), "'memory_mib' (MiB) must be between"),
    Case("price nan", ("plan", "--model", "llama-7b", "--gpu-file", "{d}/gpus_nan_price.toml"),
         "'price_per_hour_usd' must be a finite number"),
    Case("nested JSON GPU file", ("gpus", "--gpu-file", "{d}/gpus_nested.json"), "nested too deeply"),
    Case("nested TOML GPU file", ("gpus", "--gpu-file", "{d}/gpus_nested.toml"), "nested too deeply"),
    Case("binary GPU file", ("gpus", "--gpu-file", "{d}/gpus_binary.toml"), "is not valid TOML"),
    Case("2,000 GPUs", ("plan", "--model", "llama-7b", "--gpu-file", "{d}/gpus_many.toml"),
         "a GPU file holds at most 1,024"),
    Case("memory_mib '24GB'", ("gpus", "--gpu-file", "{d}/gpus_string_mib.toml"), "must be an integer, got '24GB'"),
    # CUDA memory snapshots (memplan/snapshot.py's bounded reader)
    Case("snapshot: 10^7 events by reference", ("snapshot", "{d}/snapshot_memo.pickle"), "more than the 2,000,000"),
    Case("snapshot: negative sizes", ("snapshot", "{d}/snapshot_negative.pickle"), "is negative"),
    Case("snapshot: code in the pickle", ("snapshot", "{d}/snapshot_code.pickle"), "Refusing to load the snapshot"),
    Case("snapshot: not a pickle", ("snapshot", "{d}/snapshot_text.pickle"), "Not a CUDA memory snapshot"),
    # a correct answer that fits nowhere: its own exit code
    Case("plan: nothing fits", ("plan", "--model", "llama-13b", "--gpus", "rtx-3060-12gb", "--gpu-counts", "1"),
         "Nothing fits", code=3),
    Case("fit: nothing fits", ("fit", "--model", "llama-13b", "--gpu", "rtx-3060-12gb", "--methods", "adamw"),
         "no", code=3),
]


@dataclass(frozen=True)
class Upload:
    """A dashboard upload: the config uploader in the sidebar, or the report uploader."""

    name: str
    filename: str
    content: bytes
    message: str
    target: str = "config"  # "config" | "report" | "snapshot"
    extra: dict = field(default_factory=dict)


def _report(points) -> bytes:
    return json.dumps(points).encode()


_POINT = {"config": {"model": "llama-60m", "method": "galore"},
          "estimate": {"categories": {"parameters": 10, "activations": 5}, "peak_bytes": 15},
          "measured": {"categories": {"parameters": 10, "activations": 5}, "peak_bytes": 15}, "passed": True}

UPLOADS: list[Upload] = [
    Upload("config: layers 10^6", "config.json", FILES["layers_1e6.json"], "'num_hidden_layers' must be between"),
    Upload("config: layers 10^12", "config.json", FILES["layers_1e12.json"], "under 200 layers"),
    Upload("config: tie 'false'", "config.json", FILES["tie_string.json"], "must be true or false"),
    Upload("config: quantized", "config.json", FILES["quantized.json"], "'quantization_config'"),
    Upload("config: binary", "config.json", FILES["binary.json"], "is not UTF-8 text"),
    Upload("config: nested", "config.json", FILES["nested.json"], "nested too deeply"),
    Upload("config: NaN", "config.json", FILES["nan.json"], "NaN is not a number JSON allows"),
    Upload("config: 2 MiB", "config.json", FILES["big.json"], "memplan reads at most"),
    Upload("config: markdown in the file name", "![x](http:evil.example.com/a.png).json", FILES["tie_string.json"],
           "must be true or false"),
    Upload("snapshot: 10^7 events by reference", "s.pickle", FILES["snapshot_memo.pickle"], "more than the 2,000,000",
           "snapshot"),
    Upload("snapshot: negative sizes", "s.pickle", FILES["snapshot_negative.pickle"], "is negative", "snapshot"),
    Upload("report: NaN", "r.json", json.dumps([{**_POINT, "error": {"peak": {"relative": float("nan")}}}]).encode(),
           "NaN is not a number JSON allows", "report"),
    Upload("report: 1e999", "r.json", _report([_POINT])[:-2] + b', "error": {"peak": 1e999}}]',
           "must be a finite number", "report"),
    Upload("report: 2^70 bytes", "r.json", _report([{**_POINT, "measured": {"parameters": 2**70}}]),
           "must be a number of bytes (0 to 2^60)", "report"),
    Upload("report: nested", "r.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply", "report"),
    Upload("report: binary", "r.json", b"\xff\xfe\x00", "is not UTF-8 text", "report"),
    Upload("report: 6 MB", "r.json", _report([_POINT] * 25_000), "memplan reads at most 4,194,304", "report"),
    Upload("report: 2,500 points", "r.json", _report([_POINT] * 2_500), "a report holds at most 2,000", "report"),
]

# a report whose labels try to load an external image and show a link on every viewer's screen
INJECTION_REPORT = _report([
    {**_POINT, "label": "![pwn](https://evil.example.com/x.png) [click](https://evil.example.com) <img src=x>",
     "failures": ["see ![i](https://evil.example.com/y.png)"], "passed": False},
    {"label": "[broken](https://evil.example.com)", "estimate": None, "measured": None,
     "failures": ["![z](https://evil.example.com/z.png)"]},
])

SNAPSHOT_NOT_A_PICKLE = pickle.dumps([1, 2, 3])


def write_files(folder) -> None:
    from pathlib import Path

    folder = Path(folder)
    for name, data in FILES.items():
        (folder / name).write_bytes(data)


def upload(at, up, upload_choice: str) -> None:
    """Give ``up`` to a running dashboard (streamlit AppTest ``at``) where a user would upload it:
    the sidebar's config.json uploader, or the Validation page's report / snapshot uploader."""
    if up.target == "config":
        next(w for w in at.sidebar.selectbox if w.key == "in_model").set_value(upload_choice)
        at.run()
        at.sidebar.file_uploader[0].set_value((up.filename, up.content, "application/json"))
    else:
        at.switch_page("pages_validation.py").run()
        key = "val_report" if up.target == "report" else "val_snapshot"
        next(u for u in at.file_uploader if u.key == key).set_value((up.filename, up.content, "application/json"))


def cli_args(case: Case, folder) -> list[str]:
    return [a.replace("{d}", str(folder)) for a in case.args]
