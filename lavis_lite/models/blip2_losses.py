"""BLIP-2 stage-1 loss helpers as pure functions (testable on fixed embeddings).

ITC (image-text contrastive): every query output of an image is compared with the text's [CLS]
feature and the best query counts (max over queries); the temperature is learnable and clamped
to [0.001, 0.5] as in BLIP-2; the other ranks' features are all-gathered *with* gradients so that
N processes with batch B give the same loss as one process with batch N*B; pairs whose image ids
are equal are all positives. ITM hard negatives are drawn from the ITC similarities, never from a
pair that shares the image id.
"""
from __future__ import annotations

import hashlib
import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F

logger = logging.getLogger(__name__)

TEMP_MIN, TEMP_MAX = 0.001, 0.5
ITC_LABEL_SMOOTHING = 0.1  # BLIP-2 uses 0.1 both with and without image ids


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank its slice of the summed gradient."""

    @staticmethod
    def forward(ctx, tensor):
        rank, world = rank_and_world()
        ctx.rank, ctx.batch = rank, tensor.shape[0]
        out = [torch.zeros_like(tensor) for _ in range(world)]
        dist.all_gather(out, tensor.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch:(ctx.rank + 1) * ctx.batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over ranks along dim 0, keeping the autograd graph of every rank.

    The gradient a rank receives is that of the *sum* of all ranks' losses; DDP's averaging of
    parameter gradients then gives the gradient of the mean loss, i.e. the one-big-batch gradient.
    """
    if rank_and_world()[1] == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over ranks along dim 0 (ids, token ids: nothing to differentiate)."""
    world = rank_and_world()[1]
    if world == 1:
        return tensor
    out = [torch.zeros_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out, dim=0)


def image_ids_to_tensor(image_ids, device=None) -> torch.Tensor:
    """Image ids (tensor, ints or strings) -> int64 tensor [B]; strings hash stably across ranks."""
    if isinstance(image_ids, torch.Tensor):
        return image_ids.reshape(-1).long().to(device)
    values = []
    for i, v in enumerate(image_ids):
        if isinstance(v, torch.Tensor):
            v = v.item()
        if isinstance(v, (int,)) or (isinstance(v, float) and v.is_integer()):
            values.append(int(v))
        elif isinstance(v, str):
            if v.lstrip("-").isdigit():
                values.append(int(v))
            else:  # 63-bit stable hash: Python's hash() differs between processes
                values.append(int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "big") >> 1)
        else:
            raise TypeError(f"image_id {i} of the batch is a {type(v).__name__} ({v!r}); expected int or str")
    return torch.tensor(values, dtype=torch.long, device=device)


def itc_similarities(image_feats: torch.Tensor, text_feat: torch.Tensor, image_feats_all: torch.Tensor,
                     text_feat_all: torch.Tensor, temp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled similarities, max over the query outputs.

    image_feats [B, Q, D] and text_feat [B, D] are this rank's (normalised) features, the ``_all``
    ones the gathered [W, ...]. Returns sim_i2t [B, W] (local images vs all texts) and
    sim_t2i [B, W] (local texts vs all images).
    """
    sim_i2t = torch.einsum("bqd,wd->bwq", image_feats, text_feat_all).max(-1).values / temp
    sim_t2i = torch.einsum("bd,wqd->bwq", text_feat, image_feats_all).max(-1).values / temp
    return sim_i2t, sim_t2i


def same_id_mask(image_ids: torch.Tensor, image_ids_all: torch.Tensor) -> torch.Tensor:
    """[B, W] bool: local sample b and gathered sample w show the same image."""
    return image_ids.view(-1, 1) == image_ids_all.view(1, -1)


def itc_targets(positives: torch.Tensor, smoothing: float = ITC_LABEL_SMOOTHING) -> torch.Tensor:
    """Soft targets: positives share 1 - smoothing, and smoothing is spread uniformly over all W."""
    pos = positives.float()
    if (pos.sum(1) == 0).any():
        raise ValueError("every sample must be its own positive (its image id must appear in the gathered ids)")
    targets = pos / pos.sum(1, keepdim=True)
    return (1.0 - smoothing) * targets + smoothing / pos.shape[1]


def itc_loss(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of the image->text and text->image soft-target cross entropies."""
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * targets).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * targets).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


@torch.no_grad()
def clamp_temperature_(temp: torch.Tensor) -> None:
    temp.clamp_(TEMP_MIN, TEMP_MAX)


_warned_no_negative = False


@torch.no_grad()
def sample_hard_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, positives: torch.Tensor,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM hard negatives, drawn with probability softmax(similarity) over pairs of other images.

    Returns (neg_image_idx [B]: a gathered image for each local text,
             neg_text_idx [B]: a gathered text for each local image). Pairs marked in ``positives``
    (same image id) are never drawn. A row with no candidate at all (every sample of the gathered
    batch shows the same image) falls back to a uniform draw and warns once.
    """
    def draw(sim: torch.Tensor) -> torch.Tensor:
        global _warned_no_negative
        logits = sim.float().masked_fill(positives, float("-inf"))
        empty = torch.isinf(logits).all(1)
        if empty.any():
            if not _warned_no_negative:
                logger.warning("ITM: %d sample(s) have no negative in the batch (all share one image id); "
                               "drawing uniformly", int(empty.sum()))
                _warned_no_negative = True
            logits[empty] = 0.0
        weights = torch.softmax(logits, dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)

    return draw(sim_t2i), draw(sim_i2t)


def itm_labels(batch_size: int, device=None) -> torch.Tensor:
    """Labels of the ITM triple batch [positives | (neg image, text) | (image, neg text)]."""
    return torch.cat([torch.ones(batch_size, dtype=torch.long, device=device),
                      torch.zeros(2 * batch_size, dtype=torch.long, device=device)])
