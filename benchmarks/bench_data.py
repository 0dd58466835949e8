"""Images/s through the instruction DataLoader: decode + eval transform + collate, with N workers;
and, for comparison, the same loader reading the frozen-feature cache instead of images.

    python benchmarks/bench_data.py --n 256 --source-size 640x480 --image-size 224 --workers 0,2 --seconds 5

``--resize-backends pil,tensor`` measures the eval transform with Pillow's resize (figures
``images_per_*``) and with the processor's ``resize_backend: tensor`` (``tensor_resize_images_per_*``);
``--decodes full,draft`` adds the processor's ``decode: draft`` (JPEG DCT-scaled decoding) to each backend
(``draft_images_per_*``, ``tensor_resize_draft_images_per_*``).

Prints one JSON line. Without --data-dir, COCO-sized synthetic JPEGs (photo-like statistics) and
instruction records are generated in a temporary folder; --data-dir reads demo-format data
(``python -m lavis_lite.datasets.demo``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, median, synthetic_conversations, write_synthetic_photos  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="demo-format data (python -m lavis_lite.datasets.demo)")
    p.add_argument("--n", type=int, default=256, help="records to generate when --data-dir is not given")
    p.add_argument("--source-size", default="640x480", help="WxH of the generated JPEGs")
    p.add_argument("--image-size", type=int, default=224, help="eval transform output side")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians are reported")
    p.add_argument("--resize-backends", default="pil,tensor",
                   help="comma-separated image-processor resize backends to measure (pil, tensor)")
    p.add_argument("--decodes", default="full",
                   help="comma-separated image-processor decode modes to measure (full, draft)")
    p.add_argument("--no-cache", action="store_true", help="skip the feature-cache loader")
    p.add_argument("--feature-shape", default="32,768", help="cached feature shape per image (Q-Former output)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the main process (workers use 1); more threads spin against each "
                        "other on a shared machine")
    return p.parse_args(argv)


def images_per_second(dataset, batch_size: int, workers: int, seconds: float) -> float:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=dataset.collater, persistent_workers=False, drop_last=False)
    n_images, start, it, cpu = 0, None, None, None
    while True:
        it = iter(loader) if it is None else it
        try:
            batch = next(it)
        except StopIteration:
            it = None
            continue
        if start is None:  # the first batch pays for starting workers: not counted
            start, cpu = time.perf_counter(), time.process_time()
            continue
        n_images += int(sum(batch["n_images"]))
        if time.perf_counter() - start >= seconds:
            break
    del it
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    # CPU time of this process only: meaningful with 0 workers (with workers the work is elsewhere)
    return n_images / wall, (n_images / cpu if workers == 0 and cpu > 0 else None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    from lavis_lite.common.feature_cache import (FeatureCache, attach_feature_cache, copy_with_processor,
                                                 dataset_image_paths)
    from lavis_lite.datasets.datasets.instruction_datasets import InstructionDataset
    from lavis_lite.processors.image_processors import BlipImageEvalProcessor

    tmp = tempfile.TemporaryDirectory(prefix="bench_data_")  # generated data and the cache; removed at the end
    processor = BlipImageEvalProcessor(image_size=args.image_size)
    backends = [b.strip() for b in args.resize_backends.split(",") if b.strip()]
    if args.data_dir is None:
        import json
        width, height = (int(x) for x in args.source_size.split("x"))
        paths = write_synthetic_photos(os.path.join(tmp.name, "images"), args.n, width, height)
        records = [{"image": os.path.basename(p), "conversations": c}
                   for p, c in zip(paths, synthetic_conversations(args.n))]
        ann = os.path.join(tmp.name, "train.json")
        with open(ann, "w") as f:
            json.dump(records, f)
        dataset = InstructionDataset(vis_processor=processor, vis_root=os.path.join(tmp.name, "images"),
                                     ann_paths=[ann])
    else:
        dataset = InstructionDataset(vis_processor=processor, vis_root=os.path.join(args.data_dir, "images"),
                                     ann_paths=[os.path.join(args.data_dir, "instruction", "train.json")])
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    decodes = [d.strip() for d in args.decodes.split(",") if d.strip()]
    # one dataset per (resize backend, decode), same records; figure names: "" for pil + full decode,
    # "tensor_resize_" / "draft_" / "tensor_resize_draft_" for the others
    variants = {("" if b == "pil" else f"{b}_resize_") + ("" if d == "full" else f"{d}_"):
                dataset if (b, d) == ("pil", "full") else
                copy_with_processor(dataset, BlipImageEvalProcessor(args.image_size, resize_backend=b, decode=d))
                for b in backends for d in decodes}
    figures = {f"{v}images_per_s_workers_{w}": [] for v in variants for w in workers}

    cached = None
    if not args.no_cache:
        from lavis_lite.common.feature_cache import describe_transform
        shape = tuple(int(x) for x in args.feature_shape.split(","))
        cache = FeatureCache(os.path.join(tmp.name, "cache"), "qformer",
                             describe_transform(processor), "bench-random-weights", dtype="fp16")
        for path in dataset_image_paths(dataset):  # stand-in features: reading cost is what is measured
            cache.put(path, torch.randn(*shape))
        cached = attach_feature_cache(dataset, cache)
        for w in workers:
            figures[f"cached_features_per_s_workers_{w}"] = []

    if 0 in workers:
        for v in variants:
            figures[f"{v}images_per_cpu_s"] = []
        if cached is not None:
            figures["cached_features_per_cpu_s"] = []
    for _ in range(args.repeats):
        for w in workers:
            for v, data in variants.items():
                wall, cpu = images_per_second(data, args.batch_size, w, args.seconds)
                figures[f"{v}images_per_s_workers_{w}"].append(wall)
                if cpu is not None:
                    figures[f"{v}images_per_cpu_s"].append(cpu)
            if cached is not None:
                wall, cpu = images_per_second(cached, args.batch_size, w, args.seconds)
                figures[f"cached_features_per_s_workers_{w}"].append(wall)
                if cpu is not None:
                    figures["cached_features_per_cpu_s"].append(cpu)
    result = {k: round(median(v), 1) for k, v in figures.items()}
    result["runs"] = {k: [round(x, 1) for x in v] for k, v in figures.items()}
    config = {k: v for k, v in vars(args).items()}
    config["n_records"] = len(dataset)
    record = emit("bench_data", config, result)
    tmp.cleanup()
    return record


if __name__ == "__main__":
    main()
