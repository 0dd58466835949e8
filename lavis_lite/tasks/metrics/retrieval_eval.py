"""Image-text retrieval recall@K (Flickr30k, COCO) with two ways of ranking ties.

``tie_mode="argsort"`` (default) ranks as LAVIS's ``RetrievalTask._report_metrics``: the candidates of
a query are ordered by ``numpy.argsort(scores)[::-1]`` (numpy's default quicksort, reversed) and the
query's rank is the first position of a right candidate. Equal scores are therefore ordered by
where numpy's sort leaves them, which is what LAVIS's published R@K figures used: keep this mode to
reproduce them. ``tie_mode="expected"`` is the tie-aware rank: wrong candidates scoring above the
best right one plus half of those tying with it (the expected rank under random tie-breaking; a
constant score matrix ranks every query in the middle instead of first or last).
"""
from __future__ import annotations

import numpy as np
import torch

TIE_MODES = ("argsort", "expected")


def _as_numpy(scores) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu()
        # numpy has no bfloat16: widen; float16/32/64 keep their dtype (ties depend on it)
        if scores.dtype == torch.bfloat16:
            scores = scores.float()
        return scores.numpy()
    return np.asarray(scores)


def argsort_ranks(scores, positives: list[list[int]]) -> np.ndarray:
    """LAVIS's rank: position of the first right candidate in ``argsort(row)[::-1]``."""
    scores = _as_numpy(scores)
    ranks = np.zeros(scores.shape[0])
    for q, row in enumerate(scores):
        if not positives[q]:
            raise ValueError(f"retrieval query {q} has no ground-truth match")
        order = np.argsort(row)[::-1]
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        ranks[q] = min(position[i] for i in positives[q])
    return ranks


def expected_ranks(scores, positives: list[list[int]]) -> np.ndarray:
    """Wrong candidates above the best right one, plus half of those tying with it."""
    scores = _as_numpy(scores).astype(np.float64)
    ranks = np.zeros(scores.shape[0])
    for q, row in enumerate(scores):
        if not positives[q]:
            raise ValueError(f"retrieval query {q} has no ground-truth match")
        is_pos = np.zeros(len(row), dtype=bool)
        is_pos[list(positives[q])] = True
        best = row[is_pos].max()
        ranks[q] = ((row > best) & ~is_pos).sum() + 0.5 * ((row == best) & ~is_pos).sum()
    return ranks


def recall_at_k(score_i2t, score_t2i, img2txt: list[list[int]], txt2img: list[int], ks=(1, 5, 10),
                tie_mode: str = "argsort") -> dict:
    """Retrieval recall in percent: txt_r@K (image->text), img_r@K (text->image), means, ``agg_metrics``.

    score_i2t [n_img, n_txt], score_t2i [n_txt, n_img]; img2txt[i] lists the captions of image i,
    txt2img[t] is the image of caption t. ``agg_metrics`` = txt_r_mean, as LAVIS.
    """
    if tie_mode not in TIE_MODES:
        raise ValueError(f"retrieval tie_mode must be one of {TIE_MODES}, got {tie_mode!r}")
    n_img, n_txt = tuple(score_i2t.shape)
    if tuple(score_t2i.shape) != (n_txt, n_img):
        raise ValueError(f"score_t2i has shape {tuple(score_t2i.shape)}, expected {(n_txt, n_img)}")
    if len(img2txt) != n_img or len(txt2img) != n_txt:
        raise ValueError(f"ground truth covers {len(img2txt)} images / {len(txt2img)} texts, "
                         f"scores {n_img} / {n_txt}")
    rank = argsort_ranks if tie_mode == "argsort" else expected_ranks
    r_txt = rank(score_i2t, img2txt)
    r_img = rank(score_t2i, [[i] for i in txt2img])
    result = {}
    for k in ks:
        result[f"txt_r{k}"] = 100.0 * float((r_txt < k).mean())
        result[f"img_r{k}"] = 100.0 * float((r_img < k).mean())
    result["txt_r_mean"] = sum(result[f"txt_r{k}"] for k in ks) / len(ks)
    result["img_r_mean"] = sum(result[f"img_r{k}"] for k in ks) / len(ks)
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    result["agg_metrics"] = result["txt_r_mean"]  # as LAVIS
    return result
