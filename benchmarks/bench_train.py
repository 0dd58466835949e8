"""Training throughput of MiniGPT4-Qwen: samples/s, supervised tokens/s, peak memory, (GPU) MFU.

    # CPU, bench size, naive vs optimised vs + feature cache, interleaved, one epoch (256 records) per repeat, medians:
    python benchmarks/bench_train.py --size bench --modes naive,fast,fast_group,fast_group_tresize,fast_group_cache --steps 32 --repeats 3
    # GPU, full size (EVA-ViT-G + Q-Former + Qwen-7B-shaped LLM, random weights, bf16):
    python benchmarks/bench_train.py --size full --device cuda --dtype bf16 --data synthetic \
        --batch-size 32 --modes naive,fast,fast_pack,fast_cache --steps 10 --repeats 2 [--lora] [--find-max-batch]

Modes (``--modes``) are presets, or ``name:key=value+...`` starting from ``fast``, with keys pad (max|longest),
ckpt (LLM gradient checkpointing 0|1), pack (0|1), cache (0|1), group (length-grouped sampler 0|1),
prefix (model.share_prefix 0|1), resize (the image processor's resize_backend pil|tensor),
decode (the image processor's decode full|draft: JPEG DCT-scaled decoding),
attn (model.vision_attn_implementation sdpa|eager), opt (run.optimizer_impl auto|foreach|for_loop|fused),
frozen (model.frozen_llm.enabled 0|1) and its switches trim, lastsup, constqkv, imgattn (0|1), chunk
(causal_chunk: queries per attention call, 0 = one call), dnn (model.cpu_onednn_linear 0|1: frozen CPU
Linear layers through oneDNN),
e.g. ``mine:pad=max+ckpt=0`` or ``nolast:group=1+cache=1+frozen=1+lastsup=0``:
  naive            = pad=max,ckpt=1,pack=0,cache=0,group=0,prefix=0  (the published recipe's LLM batch layout)
  published        = naive + attn=eager + opt=for_loop  (the published code's kernels too)
  fast             = pad=longest,ckpt=0,pack=0,cache=0,group=0,prefix=1,resize=pil (the defaults)
  fast_group       = fast + length-grouped batches (run.length_grouped_sampler)
  fast_pack        = fast + packing
  fast_cache       = fast + frozen-feature cache
  fast_group_cache = fast + length-grouped batches + cache
  fast_pack_cache  = fast + packing + cache
  fast_tresize, fast_group_tresize = fast, fast_group + resize=tensor (opt-in: within one level of Pillow)
  best_uncached       = fast_group_tresize + decode=draft + frozen=1 + dnn=1 (the frozen-LLM path, every exact
                        skip, oneDNN products; issue 22; the tensor resize and the draft decode are opt-in,
                        not pixel-exact)
  best_uncached_exact = fast_group + frozen=1 + dnn=1 (exact switches only: same values up to fp32 rounding)
  best_cached         = fast_group_cache + frozen=1 + dnn=1
(the issue-9 presets keep transformers' forward, frozen=0; the model's default is frozen=1)
Only ``llm_proj`` trains (``--lora`` adds r=8 LoRA on the attention projections). Each mode is
timed for ``--steps`` optimizer steps after ``--warmup`` steps, modes interleaved, ``--repeats``
times; medians are reported. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, median  # noqa: E402
from _train_data import SyntheticBatches, bench_conversations, build_disk_data, endless, group_lengths, loader  # noqa: E402

# frozen / trim / lastsup / constqkv / imgattn / fattn: model.frozen_llm (models/frozen_llm.py); issue 9's
# modes below keep transformers' forward (frozen=0) so their figures stay comparable.
_FAST = {"pad": "longest", "ckpt": 0, "pack": 0, "cache": 0, "group": 0, "prefix": 1, "resize": "pil", "decode": "full",
         "attn": "sdpa", "opt": "auto", "frozen": 0, "trim": 1, "lastsup": 1, "constqkv": 1, "imgattn": 1,
         "fattn": "sdpa", "chunk": 32, "dnn": 0}
_FROZEN = {"frozen": 1, "dnn": 1}  # issue 22: the frozen-LLM path + frozen Linear layers through oneDNN
_TEXT_KEYS = ("pad", "resize", "decode", "attn", "opt", "fattn")
PRESETS = {
    "naive": {**_FAST, "pad": "max", "ckpt": 1, "prefix": 0},
    # naive + the published code's eager ViT / Q-Former attention and per-parameter AdamW
    "published": {**_FAST, "pad": "max", "ckpt": 1, "prefix": 0, "attn": "eager", "opt": "for_loop"},
    "fast": dict(_FAST),
    "fast_group": {**_FAST, "group": 1},
    "fast_pack": {**_FAST, "pack": 1},
    "fast_cache": {**_FAST, "cache": 1},
    "fast_group_cache": {**_FAST, "cache": 1, "group": 1},
    "fast_pack_cache": {**_FAST, "pack": 1, "cache": 1},
    # + the opt-in tensor resize (within one level of Pillow's, not identical)
    "fast_tresize": {**_FAST, "resize": "tensor"},
    "fast_group_tresize": {**_FAST, "group": 1, "resize": "tensor"},
    # issue 22: the frozen-LLM path (every exact skip) on top of the best issue-9 modes
    "best_uncached": {**_FAST, "group": 1, "resize": "tensor", "decode": "draft", **_FROZEN},
    "best_uncached_exact": {**_FAST, "group": 1, **_FROZEN},
    "best_cached": {**_FAST, "group": 1, "cache": 1, **_FROZEN},
}
# Peak dense bf16 tensor FLOP/s, for MFU.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

SIZES = {
    # tiny: the model's own tiny YAML as is
    "tiny": {},
    # bench: small ViT and Q-Former, 32 queries, Qwen2-shaped LLM hidden 128 / 2 layers, 224 px
    "bench": {
        "img_size": 224,
        "vit_sizes": {"patch_size": 14, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0},
        "num_query_token": 32, "cross_attention_freq": 2,
        "qformer_config": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 64,
                           "layer_norm_eps": 1e-12, "hidden_dropout": 0.0, "attention_dropout": 0.0},
        "llm_config": {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
                       "tie_word_embeddings": True},
        "max_txt_len": 256,
    },
    # full: EVA-ViT-G (39 blocks, 1408) + BERT-base Q-Former + a Qwen-7B-shaped Qwen2 LLM, random weights
    "full": {
        "img_size": 224, "vit_sizes": None, "num_query_token": 32, "cross_attention_freq": 2,
        "qformer_config": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                           "intermediate_size": 3072, "vocab_size": 30523, "max_position_embeddings": 512,
                           "layer_norm_eps": 1e-12, "hidden_dropout": 0.1, "attention_dropout": 0.1},
        "llm_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                       "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 8192,
                       "vocab_size": 151936, "tie_word_embeddings": False, "rms_norm_eps": 1e-6},
        "max_txt_len": 512,
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="bench")
    p.add_argument("--modes", default="naive,fast,fast_group,fast_cache,fast_group_cache")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per mode and repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="CUDA: LLM and ViT weights; CPU: fp32 weights and torch.autocast to this dtype")
    p.add_argument("--data", choices=("disk", "synthetic"), default="disk",
                   help="disk: PNGs decoded + transformed by the DataLoader; synthetic: random pixels in memory")
    p.add_argument("--n-records", type=int, default=256)
    p.add_argument("--source-size", default="640x480", help="WxH of the generated JPEGs (COCO-like)")
    p.add_argument("--max-words", type=int, default=30,
                   help="longest reply in words; 30 gives ~100 text tokens per sample on average")
    p.add_argument("--data-mix", choices=("short", "published"), default="short",
                   help="short: 1-2 rounds, ~97 text tokens; published: shaped like the published MiniGPT4-Qwen "
                        "recipe's benchmark data (1-3 rounds, replies of 4-40 words, ~174 LLM positions at "
                        "max_txt_len 256, a fifth of the samples longer than 256)")
    p.add_argument("--rounds-scale", type=float, default=1.0,
                   help="published mix: rounds per conversation multiplied by this (longer real text)")
    p.add_argument("--max-txt-len", type=int, default=None, help="override the size's max_txt_len")
    p.add_argument("--group-lengths", choices=("true", "estimate"), default="true",
                   help="length-grouped modes sort by the records' true token lengths (what train.py does when the "
                        "dataset tokenises) or by the character estimate (issue 9's figures)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--text-in", choices=("auto", "loader", "model"), default="auto",
                   help="disk data: conversations tokenised by the dataset's chat processor in the DataLoader "
                        "(the pipeline train.py uses), or raw conversations tokenised by the model in the "
                        "training process, for comparison; auto: loader unless a mode packs or pads to max "
                        "(the loader's rows are laid out once, for one layout)")
    p.add_argument("--lora", action="store_true", help="LoRA r=8 on q/k/v/o projections as well")
    p.add_argument("--find-max-batch", action="store_true", help="(GPU) largest batch that fits, per mode")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's peak bf16 TFLOP/s")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on CPU: on a shared, oversubscribed machine more threads "
                        "spin against each other and run several times slower)")
    p.add_argument("--breakdown", action="store_true",
                   help="after the timed runs, CPU ms per step of the loader, the image encoder and the rest, per "
                        "mode (--steps steps each)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def parse_modes(text: str) -> dict[str, dict]:
    modes = {}
    for item in text.split(";" if ";" in text else ","):
        item = item.strip()
        if not item:
            continue
        if ":" in item:
            name, spec = item.split(":", 1)
            mode = dict(PRESETS["fast"])
            for kv in spec.split("+"):
                k, v = kv.split("=")
                if k not in mode:
                    raise ValueError(f"mode {name!r}: unknown key {k!r}; keys are {sorted(mode)}")
                mode[k] = v if k in _TEXT_KEYS else int(v)
            modes[name] = mode
        elif item in PRESETS:
            modes[item] = dict(PRESETS[item])
        else:
            raise ValueError(f"unknown mode {item!r}; presets: {sorted(PRESETS)} or name:key=value+key=value")
    return modes


def source_key(mode: dict) -> tuple:
    """Which batch stream a mode reads: cached or decoded, grouped or not, which (resize, decode)."""
    image = ("pil", "full") if mode["cache"] else (mode.get("resize", "pil"), mode.get("decode", "full"))
    return (mode["cache"], mode["group"], image)


# ---- model ---------------------------------------------------------------------------------------
def build_model(args, weights: str | None = None):
    """``weights``: the weight dtype (default ``args.dtype``; bench_train on CPU passes fp32 and autocasts)."""
    import torch

    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    overrides = {k: v for k, v in SIZES[args.size].items() if v is not None}
    if getattr(args, "max_txt_len", None):
        overrides["max_txt_len"] = args.max_txt_len
        if "llm_config" in overrides:  # rotary table long enough for the longest row
            overrides["llm_config"] = {**overrides["llm_config"], "max_position_embeddings":
                                       max(overrides["llm_config"].get("max_position_embeddings", 0), args.max_txt_len)}
    if args.size == "full":
        overrides["vit_sizes"] = None
    overrides.update(freeze_vit=True, freeze_qformer=True, freeze_queries=True, freeze_proj=False,
                     freeze_llm=True, llm_dtype=weights or args.dtype, vit_precision=weights or args.dtype,
                     get_lora=bool(args.lora), lora_r=8, lora_alpha=16, lora_dropout=0.0)
    if args.size == "full" and args.device.startswith("cuda"):
        torch.set_default_device(args.device)  # build the 8B parameters directly on the GPU
    try:
        model = Minigpt4Qwen.from_pretrained("tiny", **overrides)
    finally:
        torch.set_default_device(None)
    model = model.to(args.device)
    for attr in ("packing", "pad_to_max_txt_len"):
        if not hasattr(model, attr):
            raise RuntimeError(f"this Minigpt4Qwen has no {attr!r} switch; the packing/padding wiring is missing")
    return model


def weight_dtype(args) -> str:
    """CUDA: the weights in ``--dtype``; CPU: fp32 weights, ``--dtype`` bf16/fp16 by autocast (the runner's
    ``run.amp`` on CPU)."""
    return args.dtype if str(args.device).startswith("cuda") else "fp32"


def autocast_context(args):
    import contextlib

    import torch
    if str(args.device).startswith("cuda") or args.dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype])


def configure(model, mode: dict) -> None:
    """Apply a mode's switches to the model in place."""
    from lavis_lite.models import llm as llm_utils

    model.pad_to_max_txt_len = mode["pad"] == "max"
    model.packing = bool(mode["pack"])
    model.share_prefix = bool(mode.get("prefix", 0))
    from lavis_lite.models.attention import set_attn_implementation
    for module in (model.visual_encoder, model.Qformer):
        set_attn_implementation(module, mode.get("attn", "sdpa"))
    llm = model.llm_model
    if mode["ckpt"]:
        llm_utils.enable_grad_checkpointing(llm)
    else:
        import warnings
        with warnings.catch_warnings():  # transformers 5 renamed these; both names still work
            warnings.simplefilter("ignore", FutureWarning)
            if getattr(llm, "is_gradient_checkpointing", False):
                llm.gradient_checkpointing_disable()
    from lavis_lite.models.frozen_llm import FrozenLLMOptions
    model.frozen_llm = FrozenLLMOptions(
        enabled=bool(mode.get("frozen", 0)), trim_trailing=bool(mode.get("trim", 1)),
        last_layer_supervised_only=bool(mode.get("lastsup", 1)), const_text_qkv=bool(mode.get("constqkv", 1)),
        image_grad_attention=bool(mode.get("imgattn", 1)),
        attention=mode.get("fattn", "sdpa"), causal_chunk=int(mode.get("chunk", 32)))
    from lavis_lite.models.onednn_linear import use_onednn_linear
    use_onednn_linear(model, bool(mode.get("dnn", 0)))  # model.cpu_onednn_linear: frozen Linear via oneDNN
    model.train()


# ---- measurement ---------------------------------------------------------------------------------
def reset_peak_memory(device) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_memory_mb(device) -> float:
    import torch
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step(model, optimizer, batch, autocast) -> dict:
    """One optimizer step on ``batch``; the model's output."""
    with autocast():
        out = model(batch)
    out["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def train_steps(model, optimizer, batches, n_steps, device, autocast=None) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds of this process, samples, supervised tokens) of ``n_steps`` steps."""
    import contextlib

    import torch
    autocast = autocast or contextlib.nullcontext
    samples = tokens = 0
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(n_steps):
        batch = next(batches)
        out = _step(model, optimizer, batch, autocast)
        samples += len(batch["n_images"])
        tokens += int(out["n_tokens"])
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start, samples, tokens


def step_breakdown(model, optimizer, batches, n_steps, autocast=None) -> dict:
    """CPU ms per step (``time.process_time``) of: the loader (decode, resize, collate, tokens), the image
    encoder (``encode_image``: ViT + Q-Former + ``llm_proj`` forward; only ``llm_proj`` when cached) and the
    rest (LLM forward + backward, optimizer); ``--breakdown``."""
    import contextlib
    autocast = autocast or contextlib.nullcontext
    spent = {"data": 0.0, "image_encoder": 0.0}
    encode = model.encode_image

    def timed_encode(*a, **kw):
        start = time.process_time()
        try:
            return encode(*a, **kw)
        finally:
            spent["image_encoder"] += time.process_time() - start
    model.encode_image = timed_encode
    try:
        start = time.process_time()
        for _ in range(n_steps):
            t = time.process_time()
            batch = next(batches)
            spent["data"] += time.process_time() - t
            _step(model, optimizer, batch, autocast)
        total = time.process_time() - start
    finally:
        del model.encode_image  # the instance attribute; the class method is back
    out = {k: round(v / n_steps * 1e3, 2) for k, v in spent.items()}
    out["rest"] = round((total - sum(spent.values())) / n_steps * 1e3, 2)
    out["total"] = round(total / n_steps * 1e3, 2)
    return out


def flops_per_sample(model, batch, mode) -> float:
    """Forward+backward FLOPs actually needed per sample: each sample alone (no padding), no recompute,
    counted by torch's FlopCounterMode; the frozen stages only when the mode does not cache them."""
    from torch.utils.flop_counter import FlopCounterMode

    configure(model, {"pad": "longest", "ckpt": 0, "pack": 0, "cache": mode["cache"]})
    total, n = 0, len(batch["n_images"])
    feats = batch.get("image_features")
    pix = batch.get("image")
    for i in range(n):
        one = {"n_images": [1], "conversations": [batch["conversations"][i]]}
        if feats is not None:
            one["image_features"] = feats[i:i + 1]
        else:
            one["image"] = pix[i:i + 1]
        counter = FlopCounterMode(display=False)
        with counter:
            model(one)["loss"].backward()
        model.zero_grad(set_to_none=True)
        total += counter.get_total_flops()
    return total / n


def llm_token_stats(model, args) -> dict:
    """Sequence lengths of the benchmark's samples and LLM positions computed per sample in each layout."""
    from lavis_lite.models.packing import padding_stats

    convs = bench_conversations(args)
    lengths = model.preprocess(convs, [1] * len(convs)).lengths
    totals: dict = {}
    for s in range(0, len(lengths) - args.batch_size + 1, args.batch_size):
        for k, v in padding_stats(lengths[s:s + args.batch_size], model.chatml.max_txt_len).items():
            totals[k] = totals.get(k, 0) + v
    n = (len(lengths) // args.batch_size) * args.batch_size
    out = {k: round(v / n, 1) for k, v in totals.items() if k != "packed_rows"}
    from lavis_lite.datasets.samplers import LengthGroupedSampler, estimate_lengths
    est = group_lengths(args, model, convs) or \
        estimate_lengths([{"conversations": c, "images": ["x"]} for c in convs], num_query_token=model.num_query_token)
    order = list(LengthGroupedSampler(est, args.batch_size, 1, 0, seed=args.seed, drop_last=True))
    grouped = [max(lengths[i] for i in order[s:s + args.batch_size]) * args.batch_size
               for s in range(0, len(order), args.batch_size)]
    out["pad_to_longest_grouped"] = round(sum(grouped) / len(order), 1)
    out["mean_seq_len"] = round(sum(lengths) / len(lengths), 1)
    out["mean_text_tokens"] = round(out["mean_seq_len"] - model.num_query_token, 1)
    return out


def peak_tflops(args) -> float | None:
    import torch
    if args.peak_tflops:
        return args.peak_tflops
    if not str(args.device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(0)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def find_max_batch(model, optimizer, args, mode, cached) -> int:
    """Largest batch (doubling, then bisection) whose training step does not run out of GPU memory."""
    import torch
    ok, bad, b = 0, None, args.batch_size
    while bad is None or bad - ok > 1:
        trial = argparse.Namespace(**{**vars(args), "batch_size": b})
        try:
            batches = iter(SyntheticBatches(model, trial, cached))
            train_steps(model, optimizer, batches, 1, args.device)
            ok = b
        except torch.cuda.OutOfMemoryError:
            bad = b
        finally:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        b = b * 2 if bad is None else (ok + bad) // 2
        if b == ok:
            break
    return ok


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    if args.threads or not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    modes = parse_modes(args.modes)
    model = build_model(args, weight_dtype(args))
    trainable = [p for p in model.parameters() if p.requires_grad]
    from lavis_lite.runners.runner_base import adamw_implementation
    optimizers = {impl: torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05,
                                          **adamw_implementation(impl, torch.device(args.device)))
                  for impl in {m.get("opt", "auto") for m in modes.values()}}

    layouts = any(m["pack"] or m["pad"] == "max" for m in modes.values())
    if args.text_in == "auto":
        args.text_in = "model" if layouts else "loader"
    if args.data == "disk" and args.text_in == "loader" and layouts:
        raise SystemExit("--text-in loader lays rows out in the DataLoader (pad to longest); packing / pad=max "
                         "modes need --text-in model")
    workdir = tempfile.TemporaryDirectory(prefix="bench_train_")
    cache_build_s = None
    keys = {source_key(m) for m in modes.values()}
    if args.data == "disk":
        datasets, cache_build_s = build_disk_data(args, model, workdir.name,
                                                  image_transforms={r for _, _, r in keys})
        lengths = group_lengths(args, model, bench_conversations(args)) if any(g for _, g, _ in keys) else None
        sources = {(c, g, r): endless(lambda e, c=c, g=g, r=r: loader(datasets["cache" if c else r], args, bool(g), e,
                                                                      lengths))
                   for c, g, r in keys}
    else:
        sources = {(c, g, r): iter(SyntheticBatches(model, args, bool(c), bool(g))) for c, g, r in keys}

    runs = {name: {"samples_per_s": [], "samples_per_cpu_s": [], "tokens_per_s": [], "peak_mem_mb": []}
            for name in modes}
    # texts tokenised in this (the training) process: zero when the DataLoader tokenises (--text-in loader)
    from lavis_lite.models import conversation_encoder
    tokenised, main_pid = [0], os.getpid()
    real_encode = conversation_encoder.encode_plain

    def counting_encode(tokenizer, texts, **kw):
        if os.getpid() == main_pid:  # forked DataLoader workers inherit this function; count only here
            tokenised[0] += len(texts)
        return real_encode(tokenizer, texts, **kw)
    conversation_encoder.encode_plain = counting_encode
    for _ in range(args.repeats):
        for name, mode in modes.items():
            configure(model, mode)
            batches = sources[source_key(mode)]
            optimizer = optimizers[mode.get("opt", "auto")]
            train_steps(model, optimizer, batches, args.warmup, args.device, lambda: autocast_context(args))
            reset_peak_memory(args.device)
            elapsed, cpu, samples, tokens = train_steps(model, optimizer, batches, args.steps, args.device,
                                                        lambda: autocast_context(args))
            runs[name]["samples_per_s"].append(samples / elapsed)
            runs[name]["samples_per_cpu_s"].append(samples / cpu)
            runs[name]["tokens_per_s"].append(tokens / elapsed)
            runs[name]["peak_mem_mb"].append(peak_memory_mb(args.device))

    conversation_encoder.encode_plain = real_encode
    in_training = tokenised[0]  # over the timed and warm-up steps only
    figures = {}
    peak = peak_tflops(args)
    for name, r in runs.items():
        figures[name] = {"samples_per_s": round(median(r["samples_per_s"]), 2),
                         "supervised_tokens_per_s": round(median(r["tokens_per_s"]), 1),
                         "peak_mem_mb": round(max(r["peak_mem_mb"]), 1),
                         "samples_per_cpu_s": round(median(r["samples_per_cpu_s"]), 2),
                         "runs_samples_per_s": [round(x, 2) for x in r["samples_per_s"]],
                         "runs_samples_per_cpu_s": [round(x, 2) for x in r["samples_per_cpu_s"]]}
    base = next((n for n in ("naive",) if n in figures), None)
    if base:
        for name in figures:
            figures[name]["speedup_vs_naive"] = round(figures[name]["samples_per_s"] / figures[base]["samples_per_s"], 2)
            figures[name]["cpu_speedup_vs_naive"] = round(
                figures[name]["samples_per_cpu_s"] / figures[base]["samples_per_cpu_s"], 2)
    if peak or args.device.startswith("cuda"):
        for name, mode in modes.items():
            batch = next(sources[source_key(mode)])
            fps = flops_per_sample(model, batch, mode)
            figures[name]["flops_per_sample"] = fps
            if peak:
                figures[name]["mfu"] = round(fps * figures[name]["samples_per_s"] / (peak * 1e12), 4)
    if args.breakdown:
        for name, mode in modes.items():
            configure(model, mode)
            figures[name]["cpu_ms_per_step"] = step_breakdown(model, optimizers[mode.get("opt", "auto")],
                                                              sources[source_key(mode)], args.steps,
                                                              lambda: autocast_context(args))
    if args.find_max_batch and args.device.startswith("cuda"):
        for name, mode in modes.items():
            configure(model, mode)
            figures[name]["max_batch"] = find_max_batch(model, optimizers[mode.get("opt", "auto")], args, mode,
                                                        bool(mode["cache"]))
    if cache_build_s is not None:
        figures["cache_build_s"] = round(cache_build_s, 2)
    figures["llm_tokens"] = llm_token_stats(model, args)
    config = dict(vars(args), modes={n: m for n, m in modes.items()}, model_params=model.show_n_params(),
                  frozen_stage=model.frozen_feature_stage(), peak_bf16_tflops=peak)
    workdir.cleanup()
    figures["texts_tokenised_in_training_process"] = in_training
    return emit("bench_train", config, figures)


if __name__ == "__main__":
    main()
