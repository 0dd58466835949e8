"""NoCaps (Agrawal et al., 2019) caption metrics per domain, as the nocaps evaluation server reports them.

The official ground truth (``nocaps_val_4500_captions.json``, COCO caption format) tags every image
with ``domain``: ``in-domain``, ``near-domain`` or ``out-domain``. Each metric is computed on the
images of one domain at a time (so CIDEr's document frequencies come from that domain's references)
and on all images ("overall", the server's "entire").
"""
from __future__ import annotations

import json
import os

from lavis_lite.tasks.metrics.caption_eval import score_captions

DOMAINS = ("in-domain", "near-domain", "out-domain")


def load_nocaps_references(gt_file: str) -> tuple[dict, dict]:
    """``({str(image_id): [captions]}, {str(image_id): domain})`` from the official file."""
    if not os.path.isfile(gt_file):
        raise FileNotFoundError(f"NoCaps ground-truth file {gt_file!r} does not exist")
    with open(gt_file) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{gt_file}: not a NoCaps caption file (needs top-level 'images' and 'annotations')")
    domains = {}
    for i, image in enumerate(data["images"]):
        if "id" not in image or image.get("domain") not in DOMAINS:
            raise ValueError(f"{gt_file}: image #{i} needs 'id' and a 'domain' in {DOMAINS}: {image!r}")
        domains[str(image["id"])] = image["domain"]
    refs: dict[str, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{gt_file}: annotation #{i} lacks 'image_id' or 'caption'")
        refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
    return refs, domains


def nocaps_scores(gt_file: str, results: list[dict], metrics=None) -> dict:
    """``[{"image_id", "caption"}]`` -> ``{"overall": {...}, "in-domain": {...}, ...}`` (pycocoevalcap fractions)."""
    refs, domains = load_nocaps_references(gt_file)
    candidates = {}
    for i, r in enumerate(results):
        if "image_id" not in r or "caption" not in r:
            raise KeyError(f"caption result #{i} lacks 'image_id' or 'caption': {r!r}")
        key = str(r["image_id"])
        if key not in domains:
            raise KeyError(f"caption result for image_id {r['image_id']!r} is not an image of {gt_file}")
        candidates[key] = r["caption"]
    out = {"overall": score_captions(refs, candidates, metrics=metrics)}
    for domain in DOMAINS:
        subset = {k: v for k, v in candidates.items() if domains[k] == domain}
        if subset:
            out[domain] = score_captions(refs, subset, metrics=metrics)
        out.setdefault("n_images", {})[domain] = len(subset)
    return out
