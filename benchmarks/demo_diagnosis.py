"""Why does the demo's tiny MiniGPT4-Qwen miss count and position questions? Measurements at small scale
(docs/demo_diagnosis.md shows the figures this prints).

    python benchmarks/demo_diagnosis.py --data ~/.cache/lavis_lite/demo \
        --stage1 output/demo/stage1/checkpoint_best [--epochs 4] [--variant NAME ...]

Works on the frozen stage-1 Q-Former outputs of every image (computed once, kept in memory), then
trains llm_proj + the random tiny LLM the way stage 2 does (model.forward, AdamW, warmup + cosine) and
reports, per question type, the teacher-forced exact match (every answer token and the closing
<|im_end|> argmax-correct = what greedy decoding would answer) on train and val, plus:
  * linear probes (position, count) on the Q-Former outputs, their projection (concatenated and
    averaged over the 8 query tokens) and the LLM's hidden states at the position that predicts the
    first answer token, per layer;
  * the attention mass that position puts on the image tokens and its spread over the 8 of them;
  * the gradient norm reaching llm_proj compared with the LLM's.
Variants (--variant) change one thing each, so their figures can be set side by side.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from PIL import Image

from lavis_lite.common.registry import registry
from lavis_lite.models.chatml import IGNORE_INDEX

TYPES = ("colour", "shape", "count", "position", "compare", "describe")


def load_split(data: str, split: str) -> list[dict]:
    with open(os.path.join(data, "instruction", f"{split}.json")) as f:
        records = json.load(f)
    out = []
    for r in records:
        qs = r["instruction"] if isinstance(r["instruction"], list) else [r["instruction"]]
        ans = r["output"] if isinstance(r["output"], list) else [r["output"]]
        conv = []
        for q, a in zip(qs, ans):
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        images = r["image"] if isinstance(r["image"], list) else [r["image"]]
        out.append({"conv": conv, "images": images, "type": r["question_type"], "params": r["params"]})
    return out


def build_model(stage1: str, overrides: dict):
    cls = registry.get_model_class("minigpt4qwen")
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg = OmegaConf.merge(cfg, {"q_former_model": stage1, "freeze_llm": False, **overrides})
    return cls.from_config(cfg)


FEATURE_STAGE = "qformer"  # "vit" with --train-qformer: the Q-Former then runs (and learns) in every step


@torch.no_grad()
def qformer_features(model, data: str, records: list[dict]) -> dict:
    proc = registry.get_processor_class("blip2_image_eval").from_config({"image_size": 32})
    paths = sorted({p for r in records for p in r["images"]})
    feats = {}
    for i in range(0, len(paths), 256):
        chunk = paths[i:i + 256]
        x = torch.stack([proc(Image.open(os.path.join(data, "images", p)).convert("RGB")) for p in chunk])
        out = model.encode_image(x, stage="pixels", upto=FEATURE_STAGE)
        feats.update(zip(chunk, out))
    return feats


def as_qformer(model, x):
    """Cached features -> Q-Former outputs (they are already, unless --train-qformer cached ViT features)."""
    return x if FEATURE_STAGE == "qformer" else model.encode_image(features=x, stage="vit", upto="qformer")


def samples_of(batch, feats):
    return {"conversations": [r["conv"] for r in batch], "n_images": [len(r["images"]) for r in batch],
            "image_features": torch.stack([feats[p] for r in batch for p in r["images"]]),
            "image_features_stage": FEATURE_STAGE}


def sample_mean_loss(model, batch, feats):
    """Each conversation's answer tokens averaged, then the conversations averaged: a one-token answer
    weighs as much as a ten-token caption (the model's own loss averages over all tokens of the batch)."""
    b, embeds = llm_inputs(model, batch, feats)
    logits = model.llm_model(inputs_embeds=embeds, attention_mask=b.attention_mask).logits[:, :-1]
    targets = b.labels[:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    mask = (targets != IGNORE_INDEX).float()
    return ((ce * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()


def llm_inputs(model, batch, feats):
    s = samples_of(batch, feats)
    b = model.preprocess(s["conversations"], s["n_images"])
    embeds = model._splice(b.input_ids, model._image_embeds(s, s["n_images"], b.n_images_used), b.n_images_used)
    return b, embeds


@torch.no_grad()
def exact_match(model, records, feats, bs=128) -> dict:
    """Teacher-forced exact match per question type (last turn's answer and its <|im_end|>)."""
    model.eval()
    hits = {t: [] for t in TYPES}
    for i in range(0, len(records), bs):
        batch = records[i:i + bs]
        b, embeds = llm_inputs(model, batch, feats)
        logits = model.llm_model(inputs_embeds=embeds, attention_mask=b.attention_mask).logits[:, :-1]
        targets = b.labels[:, 1:]
        ok = (logits.argmax(-1) == targets) | (targets == IGNORE_INDEX)
        for r, row in zip(batch, ok):
            hits[r["type"]].append(bool(row.all()))
    model.train()
    return {t: 100.0 * sum(h) / len(h) for t, h in hits.items() if h}


def label_of(rec, what):
    p = rec["params"][0]
    if what == "count":
        return len(p["shapes"]) - 1
    from lavis_lite.datasets.demo import POSITIONS, position_of
    return POSITIONS.index(position_of(p, 32))


def probe(xtr, ytr, xva, yva, steps=300) -> float:
    """Linear probe (softmax regression, standardised inputs) -> val accuracy in percent."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-5
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    w = torch.zeros(xtr.shape[1], int(ytr.max()) + 1, requires_grad=True)
    b = torch.zeros(int(ytr.max()) + 1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        (F.cross_entropy(xtr @ w + b, ytr) + 1e-3 * w.pow(2).sum()).backward()
        opt.step()
    return 100.0 * float(((xva @ w + b).argmax(-1) == yva).float().mean())


@torch.no_grad()
def probes(model, train, val, feats) -> dict:
    """Probe position / count on: Q-Former outputs, projected tokens (concat, mean), LLM hidden states
    at the first-answer-predicting position per layer; attention of that position to the image tokens."""
    model.eval()
    out = {}
    for what in ("position", "count"):
        tr = [r for r in train if r["type"] == what]
        va = [r for r in val if r["type"] == what]
        reps = {}
        for name, recs in (("tr", tr), ("va", va)):
            q = as_qformer(model, torch.stack([feats[r["images"][0]] for r in recs]))
            proj = model.llm_proj(q)
            # the prompt up to the generation point: the human turn only
            convs = [r["conv"][:1] for r in recs]
            b = model.preprocess(convs, [1] * len(recs), add_generation_prompt=True, padding_side="left")
            s = {"image_features": q, "image_features_stage": "qformer"}  # q: Q-Former outputs (as_qformer)
            embeds = model._splice(b.input_ids, model._image_embeds(s, [1] * len(recs), b.n_images_used),
                                   b.n_images_used)
            o = model.llm_model(inputs_embeds=embeds, attention_mask=b.attention_mask, output_hidden_states=True,
                                output_attentions=True)
            slots = (b.input_ids == model.image_token_id)
            att = []
            for a in o.attentions:  # [B, H, L, L]: from the last position (left padded)
                last = a[:, :, -1, :]
                on_img = (last * slots[:, None, :]).sum(-1)  # [B, H]
                img = last[slots[:, None, :].expand_as(last)].view(len(recs), a.shape[1], -1)
                p = img / img.sum(-1, keepdim=True).clamp_min(1e-9)
                ent = -(p * p.clamp_min(1e-9).log()).sum(-1) / math.log(p.shape[-1])  # 1 = uniform bag
                att.append((float(on_img.mean()), float(ent.mean())))
            reps[name] = {"qformer_concat": q.flatten(1), "qformer_mean": q.mean(1), "proj_concat": proj.flatten(1),
                          "proj_mean": proj.mean(1),
                          **{f"llm_h{k}": h[:, -1] for k, h in enumerate(o.hidden_states)}}
            if name == "va":
                out[f"{what}_attention(mass_on_image,entropy)"] = att
        ytr = torch.tensor([label_of(r, what) for r in tr])
        yva = torch.tensor([label_of(r, what) for r in va])
        for key in reps["tr"]:
            with torch.enable_grad():
                out[f"{what}_probe_{key}"] = probe(reps["tr"][key], ytr, reps["va"][key], yva)
    # scale: projected image tokens vs word embeddings
    any_q = as_qformer(model, torch.stack([feats[r["images"][0]] for r in val[:64]]))
    out["norm_proj_token"] = float(model.llm_proj(any_q).norm(dim=-1).mean())
    # how alike the 8 query tokens of one image are (1 = the same vector: nothing to tell them apart by)
    for name, x in (("qformer", any_q), ("proj", model.llm_proj(any_q))):
        x = F.normalize(x, dim=-1)
        sim = x @ x.transpose(1, 2)
        off = ~torch.eye(sim.shape[-1], dtype=torch.bool)
        out[f"cos_between_query_tokens_{name}"] = float(sim[:, off].mean())
        # the part that differs between images (token minus its mean over images)
        out[f"share_of_norm_varying_across_images_{name}"] = float((x - x.mean(0, keepdim=True)).norm(dim=-1).mean())
    out["norm_word_embedding"] = float(model.llm_model.get_input_embeddings().weight.norm(dim=-1).mean())
    model.train()
    return out


def train(model, records, feats, epochs, lr, bs=32, seed=0, lr_proj_mult=1.0, log=None, sample_mean=False):
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    proj = {id(p) for p in model.llm_proj.parameters()}
    groups = [{"params": [p for p in params if id(p) not in proj], "lr": lr},
              {"params": [p for p in params if id(p) in proj], "lr": lr * lr_proj_mult}]
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    steps = epochs * math.ceil(len(records) / bs)
    step, grad_log = 0, []
    for ep in range(epochs):
        order = records[:]
        rng.shuffle(order)
        for i in range(0, len(order), bs):
            f = min(1.0, (step + 1) / 30) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            for g, base in zip(opt.param_groups, (lr, lr * lr_proj_mult)):
                g["lr"] = base * f
            batch = order[i:i + bs]
            loss = sample_mean_loss(model, batch, feats) if sample_mean else model(samples_of(batch, feats))["loss"]
            opt.zero_grad()
            loss.backward()
            if step % 50 == 0:
                gp = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.llm_proj.parameters()))
                gl = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.llm_model.parameters() if p.grad is not None))
                grad_log.append((step, float(loss), float(gp), float(gl)))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
    return grad_log


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--stage1", required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-proj-mult", type=float, default=1.0)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--only", default=None, help="comma-separated question types to train on (default: all)")
    p.add_argument("--model", default="{}", help="JSON overrides of the tiny model config")
    p.add_argument("--align-epochs", type=int, default=0, help="caption alignment epochs first (describe-style)")
    p.add_argument("--proj-init-scale", type=float, default=1.0, help="scale llm_proj's initial weights")
    p.add_argument("--repeat", default="{}", help='JSON {type: k}: repeat those training records k times')
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--sample-mean", action="store_true", help="loss: mean over conversations of their token mean")
    p.add_argument("--train-qformer", action="store_true",
                   help="the Q-Former and queries learn in stage 2 too (InstructBLIP); ViT features cached")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.process_time()
    global FEATURE_STAGE
    overrides = json.loads(args.model)
    if args.train_qformer:
        FEATURE_STAGE = "vit"
        overrides.update(freeze_qformer=False, freeze_queries=False)
    model = build_model(args.stage1, overrides)
    with torch.no_grad():
        for prm in model.llm_proj.parameters():
            prm.mul_(args.proj_init_scale)
    model.llm_model.config._attn_implementation = "eager"  # attention maps for the probes
    train_recs, val_recs = load_split(args.data, "train"), load_split(args.data, "val")
    probe_recs = val_recs + load_split(args.data, "test")  # probes only: more held-out answers
    feats = qformer_features(model, args.data, train_recs + probe_recs)
    rep = json.loads(args.repeat)
    train_fit = [r for r in train_recs for _ in range(rep.get(r["type"], 1))]
    if args.only:  # train on these question types alone: can the LLM learn them at all?
        train_fit = [r for r in train_fit if r["type"] in args.only.split(",")]
    res = {"args": vars(args), "before": probes(model, train_recs, probe_recs, feats)}
    if args.align_epochs:
        with open(os.path.join(args.data, "instruction", "captions_train.json")) as f:
            caps = [{"conv": [{"from": "human", "value": c["instruction"]}, {"from": "gpt", "value": c["output"]}],
                     "images": [c["image"]], "type": "describe", "params": None} for c in json.load(f)]
        res["align_grads"] = train(model, caps, feats, args.align_epochs, args.lr, lr_proj_mult=args.lr_proj_mult)
    res["grads(step,loss,|g_proj|,|g_llm|)"] = train(model, train_fit, feats, args.epochs, args.lr, bs=args.bs,
                                                       lr_proj_mult=args.lr_proj_mult, sample_mean=args.sample_mean)
    res["after"] = probes(model, train_recs, probe_recs, feats)
    res["exact_train"] = exact_match(model, train_recs, feats)
    res["exact_val"] = exact_match(model, val_recs, feats)
    res["exact_heldout(val+test)"] = exact_match(model, probe_recs, feats)
    res["cpu_s"] = time.process_time() - t0
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
