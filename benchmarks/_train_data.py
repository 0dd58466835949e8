"""Training data for bench_train.py: synthetic JPEGs + conversations on disk (read by the project's
InstructionDataset, with and without the frozen-feature cache), or in-memory synthetic batches."""
from __future__ import annotations

import os
import time

from _common import published_conversations, synthetic_conversations, write_synthetic_photos


def bench_conversations(args, n: int | None = None) -> list[list[dict]]:
    """The benchmark's conversations: ``--data-mix short`` (~97 text tokens, 1-2 rounds) or ``published``
    (shaped like the published recipe's benchmark data; ``--rounds-scale`` lengthens them)."""
    n = args.n_records if n is None else n
    if getattr(args, "data_mix", "short") == "published":
        return published_conversations(n, seed=args.seed, rounds_scale=getattr(args, "rounds_scale", 1.0))
    return synthetic_conversations(n, seed=args.seed, max_words=args.max_words)


def build_disk_data(args, model, workdir, image_transforms=(("pil", "full"),)):
    """Synthetic 640x480 JPEGs + conversations of varied length, read by the project's InstructionDataset
    with the eval transform (one dataset per (resize_backend, decode) pair), and the same dataset reading
    the frozen-feature cache (built here with the Pillow transform and full decode, timed).
    Returns ({("pil", "full"): ..., ("tensor", "draft"): ..., "cache": ...}, cache build seconds)."""
    import json

    from lavis_lite.common.feature_cache import attach_feature_cache
    from lavis_lite.datasets.feature_cache_run import cache_for_model, fill_cache
    from lavis_lite.datasets.datasets.instruction_datasets import InstructionDataset
    from lavis_lite.processors.image_processors import BlipImageEvalProcessor

    width, height = (int(x) for x in args.source_size.split("x"))
    images = write_synthetic_photos(os.path.join(workdir, "images"), args.n_records, width, height, args.seed)
    convs = bench_conversations(args)
    records = [{"id": str(i), "image": os.path.basename(images[i]), "conversations": c} for i, c in enumerate(convs)]
    ann = os.path.join(workdir, "bench_train.json")
    with open(ann, "w") as f:
        json.dump(records, f)
    size = model.visual_encoder.patch_embed.img_size
    datasets = {(backend, decode): InstructionDataset(
                    vis_processor=BlipImageEvalProcessor(image_size=size, resize_backend=backend, decode=decode),
                    vis_root=os.path.join(workdir, "images"), ann_paths=[ann])
                for backend, decode in set(image_transforms) | {("pil", "full")}}
    if getattr(args, "text_in", "model") == "loader":  # tokenised in the DataLoader, as train.py wires it
        from lavis_lite.datasets.chat_collator import ChatCollator
        for ds in datasets.values():
            ds.attach_chat(model.chat_processor, ChatCollator.for_model(model, image_size=size))
    dataset, processor = datasets[("pil", "full")], datasets[("pil", "full")].vis_processor
    cache = cache_for_model(model, processor, os.path.join(workdir, "cache"),
                            dtype="fp32" if args.dtype == "fp32" else args.dtype)
    start = time.perf_counter()
    fill_cache(model, dataset, cache, batch_size=args.batch_size)
    datasets["cache"] = attach_feature_cache(dataset, cache)
    return datasets, time.perf_counter() - start


def group_lengths(args, model, convs) -> list[int] | None:
    """Lengths the length-grouped sampler sorts by: ``--group-lengths true`` (what train.py uses when the
    dataset tokenises: every record's real token count, runner_base._sample_lengths) or ``estimate``
    (characters / 4 + per-turn constants: issue 9's figures)."""
    if getattr(args, "group_lengths", "true") != "true":
        return None
    encoder = model.chatml
    cached = dict(encoder._cache)
    lengths = list(model.preprocess(convs, [1] * len(convs)).lengths)
    encoder._cache = cached  # leave the training process's text cache as the measured modes would find it
    return lengths


def loader(dataset, args, group: bool = False, epoch: int = 0, lengths=None):
    """The training DataLoader; ``group``: the project's LengthGroupedSampler on ``lengths`` (default:
    estimated lengths)."""
    from torch.utils.data import DataLoader

    sampler = None
    if group:
        from lavis_lite.datasets.samplers import LengthGroupedSampler, estimate_lengths
        if lengths is None:
            lengths = estimate_lengths(dataset.annotation, num_query_token=32)
        sampler = LengthGroupedSampler(lengths, args.batch_size, num_replicas=1, rank=0, seed=args.seed,
                                       drop_last=True)
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                      num_workers=args.workers, collate_fn=dataset.collater, drop_last=True,
                      persistent_workers=args.workers > 0)


class SyntheticBatches:
    """In-memory batches (GPU runs): random pixels, or random features of the frozen stage."""

    def __init__(self, model, args, cached: bool, group: bool = False):
        import torch
        self.convs = bench_conversations(args, max(args.n_records, args.batch_size))
        if group:  # the length-grouped sampler's order (one mega-batch here)
            from lavis_lite.datasets.samplers import LengthGroupedSampler, estimate_lengths
            lengths = group_lengths(args, model, self.convs) or \
                estimate_lengths([{"conversations": c, "images": ["x"]} for c in self.convs])
            order = list(LengthGroupedSampler(lengths, args.batch_size, 1, 0, seed=args.seed, drop_last=True))
            self.convs = [self.convs[i] for i in order]
        self.batch_size, self.cached, self.model = args.batch_size, cached, model
        size = model.visual_encoder.patch_embed.img_size
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        self.pixels = torch.randn(args.batch_size, 3, size, size, generator=g).to(model.device)
        self.features = None
        if cached:
            with torch.no_grad():
                self.features = model.extract_frozen_features(self.pixels)[0]
        self.i = 0

    def __iter__(self):
        while True:
            s = (self.i * self.batch_size) % (len(self.convs) - self.batch_size + 1)
            self.i += 1
            batch = {"n_images": [1] * self.batch_size, "conversations": self.convs[s:s + self.batch_size]}
            if self.cached:
                batch["image_features"] = self.features
            else:
                batch["image"] = self.pixels
            yield batch


def endless(make_iterable):
    epoch = 0
    while True:
        yield from make_iterable(epoch)
        epoch += 1
