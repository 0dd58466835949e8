"""Conversations/s of the text pipeline: tokenisation + label masking + collation.

``--path dataset`` (default) times what a DataLoader worker does in ``InstructionDataset.collater``: the
``chat_template`` processor on the batch's conversations (one tokenizer call), then the ``ChatCollator``. ``--path
batch`` times the encoder on whole batches (what the model does in-process for raw conversations).

    python benchmarks/bench_preprocess.py --n 4096 --batch-size 8 --seconds 5

Runs on one CPU core (affinity + one torch thread + no tokenizer threads). ``epoch1`` is the first
pass over the conversations (every text tokenised), ``epoch2+`` the later passes (tokenised turns
cached per record when the model's text cache is on). ``fast_tokenize``: the exact pre-token memo in
front of the tokenizer (models/fast_tokenize.py) was used; ``--no-fast-tokenize`` turns it off. Prints
one JSON line.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, median, pin_to_one_core, synthetic_conversations  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-type", default="tiny", help="minigpt4qwen model type whose tokenizer is used")
    p.add_argument("--n", type=int, default=4096, help="distinct conversations")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-txt-len", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0, help="minimum time of the epoch2+ measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    p.add_argument("--path", choices=("dataset", "batch"), default="dataset",
                   help="dataset: per-sample processor + ChatCollator (DataLoader workers); batch: encoder per batch")
    p.add_argument("--no-fast-tokenize", action="store_true",
                   help="plain Rust tokenizer call per text (no pre-token memo), for comparison")
    return p.parse_args(argv)


def build_preprocessor(model_type: str, max_txt_len: int, arch: str = "minigpt4qwen"):
    """The model type's ``chat_template`` processor, without building the model's weights."""
    from omegaconf import OmegaConf

    from lavis_lite.common.registry import registry
    from lavis_lite.models import llm as llm_utils
    from lavis_lite.processors.chat_processor import ChatTemplateProcessor
    import lavis_lite.models  # noqa: F401 (registers the models)

    cfg = OmegaConf.load(registry.get_model_class(arch).default_config_path(model_type)).model
    family = cfg.get("llm_family", "qwen2")
    tokenizer = llm_utils.load_tokenizer(cfg.get("tokenizer") or cfg.get("llm_model"), family)
    image_token = cfg.get("image_token") or llm_utils.family_info(family)["image_token"]
    llm_utils.ensure_image_token(tokenizer, image_token, family)
    return ChatTemplateProcessor(tokenizer, cfg.get("chat_template") or llm_utils.family_info(family)["template"],
                                 image_token, int(cfg.get("num_query_token", 32)), max_txt_len,
                                 cfg.get("system_message"), llm_utils.pad_token_id(tokenizer, family))


def one_pass(pre, convs, batch_size, path: str = "dataset") -> tuple[float, float]:
    """(conversations per wall second, per CPU second of this process) over one pass."""
    import torch

    from lavis_lite.datasets.chat_collator import ChatCollator

    collate = ChatCollator(pre.pad_token_id, pre.max_txt_len)
    image = torch.zeros(1, 3, 1, 1)
    start, cpu = time.perf_counter(), time.process_time()
    for s in range(0, len(convs), batch_size):
        batch = convs[s:s + batch_size]
        if path == "dataset":
            encoded = pre.encode(batch, [1] * len(batch))
            collate([{"encoded": e, "n_images": 1, "image": image} for e in encoded])
        else:
            pre.encoder(batch, [1] * len(batch))
    return len(convs) / (time.perf_counter() - start), len(convs) / max(time.process_time() - cpu, 1e-9)


def main(argv=None) -> dict:
    args = parse_args(argv)
    core = None if args.all_cores else pin_to_one_core()
    from lavis_lite.models import fast_tokenize
    previous, fast_tokenize.enabled = fast_tokenize.enabled, not args.no_fast_tokenize
    try:
        figures = measure(args, fast_tokenize)
    finally:
        fast_tokenize.enabled = previous  # in-process callers (tests) keep their setting
    config = dict(vars(args), pinned_core=core)
    return emit("bench_preprocess", config, figures)


def measure(args, fast_tokenize) -> dict:
    convs = synthetic_conversations(args.n, seed=0)
    epoch1, later, epoch1_cpu, later_cpu = [], [], [], []
    for _ in range(args.repeats):
        pre = build_preprocessor(args.model_type, args.max_txt_len)  # fresh: nothing cached yet
        wall, cpu = one_pass(pre, convs, args.batch_size, args.path)
        epoch1.append(wall)
        epoch1_cpu.append(cpu)
        rates, start = [], time.perf_counter()
        while not rates or time.perf_counter() - start < args.seconds:
            rates.append(one_pass(pre, convs, args.batch_size, args.path))
        later.append(median([r[0] for r in rates]))
        later_cpu.append(median([r[1] for r in rates]))
    sample_pre = build_preprocessor(args.model_type, args.max_txt_len)
    sample = sample_pre.encoder(convs[:64], [1] * 64)
    figures = {"conversations_per_s_epoch1": round(median(epoch1)), "conversations_per_s_epoch2plus": round(median(later)),
               "conversations_per_cpu_s_epoch1": round(median(epoch1_cpu)),
               "conversations_per_cpu_s_epoch2plus": round(median(later_cpu)),
               "runs_epoch1": [round(x) for x in epoch1], "runs_epoch2plus": [round(x) for x in later],
               "mean_tokens_per_conversation": round(sum(sample.lengths) / len(sample.lengths), 1),
               "text_cache": bool(sample_pre.encoder.cache_size),
               "fast_tokenize": fast_tokenize.fast_tokenizer(sample_pre.tokenizer) is not None}
    return figures


if __name__ == "__main__":
    main()
