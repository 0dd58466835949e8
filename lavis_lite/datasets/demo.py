"""Bundled demo data: small images of coloured shapes with exact questions, answers and captions.

    python -m lavis_lite.datasets.demo --out DIR [--n 4000 --seed 0 --size 32 --shards 4]
        [--contrast position count] [--compare-pairs N] [--compare-answer reasoned|short] ...
    python lavis_lite/datasets/demo.py ...   (the same; as a file it skips the package import: it needs
                                              only Pillow and the standard library, and must stay so)

Writes (layout of docs/contracts.md):
    DIR/images/<split>/*.png
    DIR/instruction/<split>.json     MiniGPT4-Qwen format + "question_type" + drawn "params" (train: with
                                     --compare-pairs, more compare records over images already drawn)
    DIR/instruction/captions_<split>.json  image -> caption, every drawn image (the alignment stage)
    DIR/llava/<split>.json           the same records as LLaVA conversations
    DIR/caption/<split>.json         Karpathy format (train: one record per caption, image_id = the content
                                     the captions state; val/test: one per image, image_id = the image);
                                     with --contrast, train also holds each position / count train image's
                                     contrast set (images/train/*_contrastK.png: the same shapes at the
                                     other positions / counts) under one "batch_group" (run.batch_group_key)
    DIR/caption/<split>_gt.json      COCO caption ground truth (pycocoevalcap)
    DIR/vqa/<split>.json             single-image questions, COCO-VQA style
    DIR/shards/<split>-NNNNNN.tar    webdataset shards of the instruction records (N.png + json)

Most records show ONE large, roughly centred shape on a plain background and ask its colour or
shape (learnable by a tiny model in minutes on CPU, see issue 11); count, position, describe,
two-image comparison and multi-turn records are a minority. Every record keeps the drawn
parameters so answers can be re-derived. Same --seed, same files.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import tarfile
import time

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
# Share of records per kind; colour and shape dominate on purpose.
QUESTION_MIX = {"colour": 0.30, "shape": 0.30, "multi": 0.06, "count": 0.08, "position": 0.08,
                "describe": 0.08, "compare": 0.10}
QUESTIONS = {
    "colour": ("What colour is the shape?", "What is the colour of the shape?"),
    "shape": ("What shape is this?", "What shape is in the image?"),
    "count": ("How many shapes are there?",),
    "position": ("Where is the shape?",),
    "describe": ("Describe the image.",),
    "compare_shape": ("Do the two images show the same shape?",),
    "compare_colour": ("Do the two images show the same colour?",),
}
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.1}  # the rest is train
# The question types a held-out split can be stratified over (multi-turn records count as their last turn).
QUESTION_TYPES = ("colour", "shape", "count", "position", "compare", "describe")
DATA_VERSION = 8  # bump when the files written change: --reuse then regenerates
META_FILE = "meta.json"  # the generator's arguments: a data folder is reused only when they match
TAG = "<ImageHere>"


# ---- drawing ----------------------------------------------------------------------------------
def draw_image(params: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[params["background"]])
    draw = ImageDraw.Draw(img)
    for s in params["shapes"]:
        cx, cy, half, fill = s["cx"], s["cy"], s["size"] / 2, COLOURS[s["colour"]]
        box = [cx - half, cy - half, cx + half, cy + half]
        if s["shape"] == "circle":
            draw.ellipse(box, fill=fill)
        elif s["shape"] == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return img


def _shape(rng, shape, colour, cx, cy, size):
    return {"shape": shape or rng.choice(SHAPES), "colour": colour or rng.choice(list(COLOURS)),
            "cx": int(cx), "cy": int(cy), "size": int(size)}


def single_params(rng: random.Random, S: int, shape=None, colour=None) -> dict:
    """One large shape near the centre."""
    jitter = max(1, round(0.08 * S))
    size = rng.randint(round(0.55 * S), round(0.75 * S))
    cx, cy = S // 2 + rng.randint(-jitter, jitter), S // 2 + rng.randint(-jitter, jitter)
    return {"layout": "centre", "background": rng.choice(list(BACKGROUNDS)),
            "shapes": [_shape(rng, shape, colour, cx, cy, size)]}


def count_slots(S: int) -> list[tuple[int, int]]:
    """The four quadrant centres a count layout places its shapes at."""
    return [(S // 4, S // 4), (3 * S // 4, S // 4), (S // 4, 3 * S // 4), (3 * S // 4, 3 * S // 4)]


def count_params(rng: random.Random, S: int) -> dict:
    """1-3 copies of one shape in distinct quadrants (never overlapping)."""
    n = rng.randint(1, 3)
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    slots = rng.sample(count_slots(S), n)
    size = max(3, round(0.34 * S))
    return {"layout": "count", "background": rng.choice(list(BACKGROUNDS)),
            "shapes": [_shape(rng, shape, colour, x, y, size) for x, y in slots]}


def position_xy(where: str, S: int) -> tuple[int, int]:
    return {"left": (S // 4, S // 2), "right": (3 * S // 4, S // 2),
            "top": (S // 2, S // 4), "bottom": (S // 2, 3 * S // 4)}[where]


def position_params(rng: random.Random, S: int) -> dict:
    x, y = position_xy(rng.choice(POSITIONS), S)
    return {"layout": "position", "background": rng.choice(list(BACKGROUNDS)),
            "shapes": [_shape(rng, None, None, x, y, max(3, round(0.38 * S)))]}


def contrast_params(params: dict, S: int, rng: random.Random) -> list[dict]:
    """The same shapes, colour and background as a position or count layout, at every other position or
    count: images that differ from ``params`` only in what is asked about it (stage-1 ITC negatives)."""
    layout, first = params.get("layout"), params["shapes"][0]
    if layout == "position":
        return [{"layout": "position", "background": params["background"],
                 "shapes": [{**first, "cx": x, "cy": y}]}
                for x, y in (position_xy(w, S) for w in POSITIONS if w != position_of(params, S))]
    if layout == "count":
        return [{"layout": "count", "background": params["background"],
                 "shapes": [{**first, "cx": x, "cy": y} for x, y in rng.sample(count_slots(S), n)]}
                for n in NUMBER_WORDS if n != len(params["shapes"])]
    raise ValueError(f"no contrast images for layout {layout!r} (position and count only)")


# ---- answers (pure functions of the drawn parameters; tests re-derive them) -------------------
def position_of(params: dict, S: int) -> str:
    s = params["shapes"][0]
    dx, dy = s["cx"] - S / 2, s["cy"] - S / 2
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def caption_of(params: dict, S: int, variant: int = 0) -> str:
    shapes, bg = params["shapes"], params["background"]
    n, s = len(shapes), shapes[0]
    noun = f"{s['colour']} {s['shape']}" + ("s" if n > 1 else "")
    subject = f"a {noun}" if n == 1 else f"{NUMBER_WORDS[n]} {noun}"
    if params.get("layout") == "position":
        where = position_of(params, S)
        if variant == 0:
            return f"{subject} on the {where} side of a {bg} background."
        return f"a picture of {subject} on the {where}."
    if variant == 0:
        return f"{subject} on a {bg} background."
    return f"a picture of {subject}."


def itc_id_of(params: dict, S: int) -> str:
    """Stage-1 ITC id of an image: equal for images whose captions state the same content that is asked
    about them (measured choice, docs/demo_diagnosis.md section 0)."""
    return caption_of(params, S, 0 if params.get("layout") == "centre" else 1)


COMPARE_ANSWERS = ("reasoned", "short")


def answer_of(kind: str, params: list[dict], S: int, compare_answer: str = "reasoned") -> str:
    first = params[0]["shapes"][0]
    if kind == "colour":
        return first["colour"]
    if kind == "shape":
        return first["shape"]
    if kind == "count":
        return str(len(params[0]["shapes"]))
    if kind == "position":
        return position_of(params[0], S)
    if kind == "describe":
        return caption_of(params[0], S, 0)
    if kind in ("compare_shape", "compare_colour"):
        key = kind.split("_")[1]
        a, b = params[0]["shapes"][0][key], params[1]["shapes"][0][key]
        verdict = "yes" if a == b else "no"
        if compare_answer == "short":
            return verdict
        # "reasoned": the two values seen, then the verdict: "red and blue, so no." The values come in a
        # fixed order (COLOURS / SHAPES), not image order: the answer states what the two images hold,
        # which the averaged image tokens carry, and the verdict follows from it (docs/demo_diagnosis.md
        # section 7: held-out compare 62% with "yes"/"no" alone).
        order = list(COLOURS) if key == "colour" else list(SHAPES)
        a, b = sorted((a, b), key=order.index)
        return f"{a} and {b}, so {verdict}." if key == "colour" else f"a {a} and a {b}, so {verdict}."
    raise ValueError(f"unknown question kind {kind!r}")


# ---- records ----------------------------------------------------------------------------------
def make_record(rng: random.Random, kind: str, S: int) -> dict:
    """Drawn parameters plus the question turns ``[(question kind, question text), ...]``."""
    if kind == "compare":
        sub = rng.choice(("compare_shape", "compare_colour"))
        a = single_params(rng, S)
        same = rng.random() < 0.5
        key = sub.split("_")[1]
        other = a["shapes"][0][key] if same else rng.choice(
            [v for v in (SHAPES if key == "shape" else list(COLOURS)) if v != a["shapes"][0][key]])
        b = single_params(rng, S, **{key: other})
        return {"params": [a, b], "turns": [(sub, rng.choice(QUESTIONS[sub]))], "question_type": "compare"}
    if kind == "count":
        params = count_params(rng, S)
    elif kind == "position":
        params = position_params(rng, S)
    else:
        params = single_params(rng, S)
    if kind == "multi":
        turns = [("colour", rng.choice(QUESTIONS["colour"])), ("shape", rng.choice(QUESTIONS["shape"]))]
        if rng.random() < 0.5:
            turns.reverse()
        return {"params": [params], "turns": turns, "question_type": turns[-1][0]}
    return {"params": [params], "turns": [(kind, rng.choice(QUESTIONS[kind]))], "question_type": kind}


def extra_compare_records(rng: random.Random, centred: list, n: int) -> list[tuple[dict, list]]:
    """``n`` compare records (``make_record``'s form) over images already drawn: ``centred`` holds
    ``(path, params, png bytes)`` of one-centred-shape images; each record pairs two distinct ones,
    asks "the same shape?" or "the same colour?" (half each) and is a "yes" half the time.
    Returns ``[(record, [the two entries of centred]), ...]``."""
    if len(centred) < 2:
        raise ValueError("compare pairs need at least two centred-shape train images")
    out = []
    for _ in range(n):
        sub = rng.choice(("compare_shape", "compare_colour"))
        key = sub.split("_")[1]
        a = rng.choice(centred)
        same = rng.random() < 0.5
        pool = [c for c in centred if c is not a and
                (c[1]["shapes"][0][key] == a[1]["shapes"][0][key]) == same]
        b = rng.choice(pool)
        out.append(({"params": [a[1], b[1]], "turns": [(sub, rng.choice(QUESTIONS[sub]))],
                     "question_type": "compare"}, [a, b]))
    return out


def _append_conversation(instr: list, llava: list, rid: str, rec: dict, rel_paths: list[str], size: int,
                         compare_answer: str) -> list:
    """Append ``rec`` (``make_record``'s form, its images at ``rel_paths``) to the instruction and LLaVA
    records; returns its answers."""
    tags = TAG * len(rel_paths)
    questions = [q for _, q in rec["turns"]]
    answers = [answer_of(k, rec["params"], size, compare_answer) for k, _ in rec["turns"]]
    image_field = rel_paths[0] if len(rel_paths) == 1 else rel_paths
    extra = {"question_type": rec["question_type"], "params": rec["params"],
             "turn_types": [k for k, _ in rec["turns"]]}
    one = len(questions) == 1
    instr.append({"id": rid, "image": image_field,
                  "instruction": f"{tags} {questions[0]}" if one else [f"{tags} {questions[0]}"] + questions[1:],
                  "output": answers[0] if one else answers, **extra})
    conv = []
    for t, (q, a) in enumerate(zip(questions, answers)):
        conv += [{"from": "human", "value": ("<image>\n" * len(rel_paths) if t == 0 else "") + q},
                 {"from": "gpt", "value": a}]
    llava.append({"id": rid, "image": image_field, "conversations": conv, **extra})
    return answers


def _split_sizes(n: int) -> dict[str, int]:
    sizes = {s: max(1, round(f * n)) for s, f in SPLIT_FRACTIONS.items()}
    sizes = {"train": n - sum(sizes.values()), **sizes}
    if sizes["train"] < 1:
        raise ValueError(f"--n {n} is too small for train/val/test splits")
    return sizes


def _kinds_of_split(rng, split: str, n_split: int, per_type: int | None) -> list[str | None]:
    """The record kinds of a split: drawn from ``mix``, or (held-out splits with ``per_type``) exactly
    ``per_type`` of every question type in a shuffled order, so each type's accuracy rests on enough answers."""
    if split != "train" and per_type:
        kinds = [k for k in QUESTION_TYPES for _ in range(per_type)]
        rng.shuffle(kinds)
        return kinds
    return [None] * n_split  # drawn record by record (same stream as before stratification existed)


def generate(out: str, n: int = 4000, seed: int = 0, size: int = 32, n_shards: int = 4,
             val_per_type: int | None = None, test_per_type: int | None = None, mix: dict | None = None,
             contrast: tuple[str, ...] = (), stage1_skip: tuple[str, ...] = (), compare_pairs: int = 0,
             compare_answer: str = "reasoned", centred_captions: str = "both") -> dict:
    """Write the demo data set under ``out``; returns {split: number of instruction records}.
    ``val_per_type`` / ``test_per_type``: stratify that held-out split, that many records per question
    type (else it is ``SPLIT_FRACTIONS`` of ``n`` drawn from the mix); ``mix``: train kinds' shares;
    ``contrast``: layouts ("position", "count") whose train images get a contrast set in the stage-1
    captions (``contrast_params``; drawn from their own random stream, so the other files do not change);
    ``stage1_skip``: question types whose train images stay out of the stage-1 captions (e.g. "compare":
    its images are centred shapes like most others; stage 1 then costs less); ``compare_pairs``: that many
    more train compare records, each pairing two centred-shape images the train split already drew
    (``extra_compare_records``: no new image, so stage 1 and the frozen features do not change);
    ``compare_answer``: "reasoned" (the two values, then the verdict: "red and blue, so no.") or "short"
    ("no"), see ``answer_of``; ``centred_captions``: the stage-1 captions of a centred-shape train image,
    "both" wordings or "one" (alternating by image; fewer stage-1 samples per epoch)."""
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {size}")
    if compare_answer not in COMPARE_ANSWERS:
        raise ValueError(f"compare_answer must be one of {COMPARE_ANSWERS}, got {compare_answer!r}")
    if centred_captions not in ("both", "one"):
        raise ValueError(f"centred_captions must be 'both' or 'one', got {centred_captions!r}")
    if compare_pairs < 0:
        raise ValueError(f"--compare-pairs must be >= 0, got {compare_pairs}")
    mix = dict(mix or QUESTION_MIX)
    unknown = set(mix) - set(QUESTION_MIX)
    if unknown:
        raise ValueError(f"unknown question kinds in the mix: {sorted(unknown)} (known: {list(QUESTION_MIX)})")
    rng = random.Random(seed)
    unknown = set(contrast) - {"position", "count"}
    if unknown:
        raise ValueError(f"contrast sets exist for the position and count layouts only, got {sorted(unknown)}")
    contrast_rng = random.Random(seed + 7919)
    unknown = set(stage1_skip) - set(QUESTION_TYPES)
    if unknown:
        raise ValueError(f"unknown question types in stage1_skip: {sorted(unknown)} (known: {list(QUESTION_TYPES)})")
    per_type = {"val": val_per_type, "test": test_per_type}
    sizes = _split_sizes(n)
    sizes.update({s: k * len(QUESTION_TYPES) for s, k in per_type.items() if k})
    counts, image_id, question_id = {}, 0, 0
    for split, n_split in sizes.items():
        kinds = _kinds_of_split(rng, split, n_split, per_type.get(split))
        img_dir = os.path.join(out, "images", split)
        os.makedirs(img_dir, exist_ok=True)
        instr, llava, cap_train, cap_eval, vqa, gt_images, gt_anns, shard_items = [], [], [], [], [], [], [], []
        align, centred = [], []  # centred: (image path, params, PNG bytes) of the split's one-centred-shape images
        for r in range(n_split):
            rec = make_record(rng, kinds[r] or rng.choices(list(mix), list(mix.values()))[0], size)
            rid = f"{split}_{r:06d}"
            rel_paths = []
            for k, params in enumerate(rec["params"]):
                suffix = "" if len(rec["params"]) == 1 else f"_{'ab'[k]}"
                rel = f"{split}/{r:06d}{suffix}.png"
                buf = io.BytesIO()
                draw_image(params, size).save(buf, format="PNG")
                with open(os.path.join(out, "images", rel), "wb") as f:
                    f.write(buf.getvalue())
                rel_paths.append(rel)
                shard_items.append((rid, k, buf.getvalue()))
                if params.get("layout") == "centre":
                    centred.append((rel, params, buf.getvalue()))
                # Every drawn image is also a caption sample (stage 1: but those of stage1_skip kinds).
                caps = [caption_of(params, size, v) for v in (0, 1)]
                # Train "image_id" = the content a caption states, so images the captions cannot tell apart
                # are one image to ITC (positives), not each other's negatives: for one centred shape the
                # whole caption (background included: "describe" asks it); for count and position
                # layouts what both captions state (what is asked there). docs/demo_diagnosis.md.
                group = {}
                if split == "train" and params.get("layout") in contrast:
                    # Contrast set (stage-1 captions only): the same shape(s) at the other positions /
                    # counts, new train images, one batch_group with this image (run.batch_group_key).
                    group = {"batch_group": rid}
                    for c, other in enumerate(contrast_params(params, size, contrast_rng)):
                        crel = f"{split}/{r:06d}{suffix}_contrast{c}.png"
                        draw_image(other, size).save(os.path.join(out, "images", crel))
                        cap_train += [{"image": crel, "caption": caption_of(other, size, v),
                                       "image_id": itc_id_of(other, size), **group} for v in (0, 1)]
                if split != "train" or rec["question_type"] not in stage1_skip:
                    # centred_captions "one": a centred shape gets one wording (alternating by image), the
                    # position / count layouts (and their contrast sets) keep both: stage 1 costs less
                    one = centred_captions == "one" and params.get("layout") == "centre"
                    cap_train += [{"image": rel, "caption": c, "image_id": itc_id_of(params, size), **group}
                                  for c in ([caps[image_id % 2]] if one else caps)]
                cap_eval.append({"image": rel, "caption": caps, "image_id": image_id})
                # MiniGPT-4's first stage: the image alone, then its caption (both wordings, alternately)
                align.append({"id": f"{rid}{suffix}", "image": rel, "instruction": TAG,
                              "output": caps[image_id % 2], "question_type": "caption"})
                gt_images.append({"id": image_id, "file_name": rel})
                gt_anns += [{"image_id": image_id, "id": len(gt_anns) + j, "caption": c} for j, c in enumerate(caps)]
                image_id += 1
            answers = _append_conversation(instr, llava, rid, rec, rel_paths, size, compare_answer)
            if len(rel_paths) == 1:
                for (k, q), a in zip(rec["turns"], answers):
                    if k == "describe":  # VQA answers stay short
                        continue
                    vqa.append({"question_id": question_id, "image": rel_paths[0], "question": q,
                                "answer": [a], "question_type": k})
                    question_id += 1
        if split == "train" and compare_pairs:
            pairs = extra_compare_records(random.Random(seed + 104729), centred, compare_pairs)
            for j, (rec, chosen) in enumerate(pairs):
                rid = f"{split}_{n_split + j:06d}"
                _append_conversation(instr, llava, rid, rec, [rel for rel, _, _ in chosen], size, compare_answer)
                shard_items += [(rid, k, data) for k, (_, _, data) in enumerate(chosen)]
            n_split += compare_pairs
        _dump(os.path.join(out, "instruction", f"{split}.json"), instr)
        _dump(os.path.join(out, "llava", f"{split}.json"), llava)
        _dump(os.path.join(out, "instruction", f"captions_{split}.json"), align)
        _dump(os.path.join(out, "caption", f"{split}.json"), cap_train if split == "train" else cap_eval)
        _dump(os.path.join(out, "caption", f"{split}_gt.json"),
              {"info": {"description": "lavis_lite demo shapes"}, "licenses": [], "type": "captions",
               "images": gt_images, "annotations": gt_anns})
        _dump(os.path.join(out, "vqa", f"{split}.json"), vqa)
        _write_shards(os.path.join(out, "shards"), split, instr, shard_items, n_shards if split == "train" else 1, size)
        counts[split] = n_split
    return counts


def meta_of(args) -> dict:
    return {"version": DATA_VERSION, "n": args.n, "seed": args.seed, "size": args.size, "shards": args.shards,
            "val_per_type": args.val_per_type, "test_per_type": args.test_per_type,
            "mix": json.loads(args.mix) if args.mix else QUESTION_MIX, "contrast": args.contrast,
            "stage1_skip": args.stage1_skip, "compare_pairs": args.compare_pairs,
            "compare_answer": args.compare_answer, "centred_captions": args.centred_captions}


def _dump(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps(obj))  # one write: json.dump's many small writes are slow


def _write_shards(shard_dir: str, split: str, records: list[dict], items, n_shards: int, size: int) -> None:
    """Each sample: ``<id>.<k>.png`` per image and ``<id>.json`` (the record without paths, plus
    the caption of its first image)."""
    os.makedirs(shard_dir, exist_ok=True)
    images: dict[str, list[bytes]] = {}
    for rid, _k, data in items:
        images.setdefault(rid, []).append(data)
    n_shards = max(1, min(n_shards, len(records)))
    for s in range(n_shards):
        with tarfile.open(os.path.join(shard_dir, f"{split}-{s:06d}.tar"), "w") as tar:
            for rec in records[s::n_shards]:
                meta = {k: v for k, v in rec.items() if k != "image"}
                meta["caption"] = caption_of(rec["params"][0], size, 0)
                members = [(f"{rec['id']}.{k}.png", b) for k, b in enumerate(images[rec["id"]])]
                members.append((f"{rec['id']}.json", json.dumps(meta).encode()))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))


def write_preview(data_dir: str, path: str, split: str = "train", n: int = 8, scale: int = 4) -> None:
    """A picture of the first ``n`` records with their question and answer (for the README)."""
    with open(os.path.join(data_dir, "instruction", f"{split}.json")) as f:
        records = json.load(f)
    # One record of each kind first (multi-turn included), then fill up in file order.
    picked, kinds = [], set()
    for rec in records:
        kind = "multi" if len(rec["turn_types"]) > 1 else rec["question_type"]
        if kind not in kinds:
            kinds.add(kind)
            picked.append(rec)
    records = (picked + [r for r in records if r not in picked])[:n]
    cell_w, text_h = 48 * scale, 34
    sheet = Image.new("RGB", (cell_w * len(records), cell_w + text_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, rec in enumerate(records):
        paths = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        w = cell_w // len(paths)
        for k, p in enumerate(paths):
            img = Image.open(os.path.join(data_dir, "images", p)).convert("RGB")
            x, y = i * cell_w + k * w + 2, 2 + (cell_w - w) // 2
            sheet.paste(img.resize((w - 4, w - 4), Image.NEAREST), (x, y))
            draw.rectangle([x - 1, y - 1, x + w - 4, y + w - 4], outline=(90, 90, 90))
        q = rec["instruction"] if isinstance(rec["instruction"], str) else rec["instruction"][-1]
        a = rec["output"] if isinstance(rec["output"], str) else rec["output"][-1]
        q = q.replace(TAG, "").strip()
        draw.text((i * cell_w + 4, cell_w + 2), q[:32], fill=(0, 0, 0))
        draw.text((i * cell_w + 4, cell_w + 17), ("-> " + a)[:32], fill=(180, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    parser.add_argument("--n", type=int, default=4000, help="instruction records over all splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--shards", type=int, default=4, help="webdataset shards for train")
    parser.add_argument("--val-per-type", type=int, default=None,
                        help="stratified val split: this many records of every question type")
    parser.add_argument("--test-per-type", type=int, default=None,
                        help="stratified test split: this many records of every question type")
    parser.add_argument("--mix", default=None, help='train question mix as JSON, e.g. {"colour": 0.1, ...}')
    parser.add_argument("--contrast", nargs="*", default=[], choices=("position", "count"),
                        help="layouts whose train images get stage-1 contrast sets (the same shapes at the "
                             "other positions / counts, one batch_group)")
    parser.add_argument("--stage1-skip", nargs="*", default=[], choices=QUESTION_TYPES,
                        help="question types whose train images are not stage-1 caption samples")
    parser.add_argument("--compare-pairs", type=int, default=0,
                        help="more train compare records, each pairing two centred-shape train images already drawn")
    parser.add_argument("--compare-answer", default="reasoned", choices=COMPARE_ANSWERS,
                        help='compare answers: "reasoned" ("red and blue, so no.") or "short" ("no")')
    parser.add_argument("--centred-captions", default="both", choices=("both", "one"),
                        help="stage-1 captions per centred-shape train image: both wordings or one (alternating)")
    parser.add_argument("--reuse", action="store_true",
                        help=f"keep an existing data folder whose {META_FILE} matches these arguments")
    parser.add_argument("--preview", default=None, help="also write a PNG of a few samples here")
    args = parser.parse_args(argv)
    meta, meta_path = meta_of(args), os.path.join(args.out, META_FILE)
    if args.reuse and os.path.isfile(meta_path):
        with open(meta_path) as f:
            if json.load(f) == meta:
                print(f"demo data in {args.out}: reused ({META_FILE} matches)")
                return
    if os.path.isfile(meta_path):
        os.remove(meta_path)  # an interrupted run must not leave a folder that looks complete
    start = time.time()
    counts = generate(args.out, n=args.n, seed=args.seed, size=args.size, n_shards=args.shards,
                      val_per_type=args.val_per_type, test_per_type=args.test_per_type,
                      mix=json.loads(args.mix) if args.mix else None, contrast=tuple(args.contrast),
                      stage1_skip=tuple(args.stage1_skip), compare_pairs=args.compare_pairs,
                      compare_answer=args.compare_answer, centred_captions=args.centred_captions)
    _dump(meta_path, meta)
    if args.preview:
        write_preview(args.out, args.preview)
    print(f"demo data in {args.out}: {counts} records, {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
