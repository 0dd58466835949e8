"""The conversation encoder gives exactly the ids / labels / image counts / truncation accounting pinned
before its speed rewrite (chat_golden_cases.py), for every registered template, in any batching, with the
record cache on or off; the ChatCollator's batch equals a per-sample reference layout."""
import json
import logging

import numpy as np
import pytest
import torch

from chat_golden_cases import FIXTURE, MAX_LENS, TEMPLATE_FAMILY, conversations, digest, encode_all, encoder

GOLDEN = json.load(open(FIXTURE))


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)  # truncation cases warn per sample
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("template", sorted(TEMPLATE_FAMILY))
def test_ids_labels_equal_the_pinned_encoding(template):
    ours = encode_all(template)
    assert set(ours) == set(GOLDEN[template])
    for mode, digests in GOLDEN[template].items():
        bad = [i for i, (a, b) in enumerate(zip(ours[mode], digests)) if a != b]
        assert len(ours[mode]) == len(digests) and not bad, f"{template} {mode}: conversations {bad} differ"


@pytest.mark.parametrize("template", ["qwen2", "llama2", "minigpt4_vicuna0"])
def test_batching_and_the_record_cache_do_not_change_the_encoding(template):
    convs = conversations()
    texts, images = [c for c, _ in convs], [n for _, n in convs]
    for max_len in (MAX_LENS[0], MAX_LENS[3]):
        whole = [digest(e) for e in encoder(template, max_len).encode(texts, images)]
        one = encoder(template, max_len)
        singles = [digest(one.encode([c], [n])[0]) for c, n in zip(texts, images)]
        cached = encoder(template, max_len)
        cached.cache_size = 100_000
        first = [digest(e) for e in cached.encode(texts[::-1], images[::-1])][::-1]
        again = [digest(e) for e in cached.encode(texts, images)]
        assert whole == singles == first == again


def reference_layout(encoded, pad, max_len, packing):
    """Per-sample loops: what the ChatCollator must produce."""
    from lavis_lite.models.packing import plan_rows

    lengths = [len(e) for e in encoded]
    rows = plan_rows(lengths, max_len) if packing else [[i] for i in range(len(encoded))]
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = np.full((len(rows), width), pad)
    labels = np.full((len(rows), width), -100)
    pos = np.zeros((len(rows), width), dtype=np.int64)
    seg = np.full((len(rows), width), -1)
    for r, row in enumerate(rows):
        start = 0
        for s, i in enumerate(row):
            n = lengths[i]
            ids[r, start:start + n] = encoded[i].ids
            labels[r, start:start + n] = encoded[i].labels
            labels[r, start] = -100
            pos[r, start:start + n] = np.arange(n)
            seg[r, start:start + n] = s
            start += n
        pos[r, start:] = np.arange(width - start)
    return ids, labels, pos, seg, rows


@pytest.mark.parametrize("packing", [False, True])
def test_collator_batch_equals_the_per_sample_layout(packing):
    from lavis_lite.datasets.chat_collator import ChatCollator

    enc = encoder("qwen2", 90)
    convs = conversations()
    encoded = enc.encode([c for c, _ in convs], [n for _, n in convs])
    collate = ChatCollator(enc.pad_token_id, 90, packing=packing)
    images = [torch.full((n, 3, 2, 2), float(i)) for i, (_, n) in enumerate(convs)]
    batch = collate([{"encoded": e, "n_images": n, "image": img, "instance_id": i}
                     for i, (e, (_, n), img) in enumerate(zip(encoded, convs, images))])
    ids, labels, pos, seg, rows = reference_layout(encoded, enc.pad_token_id, 90, packing)
    assert batch["input_ids"].tolist() == ids.tolist() and batch["labels"].tolist() == labels.tolist()
    assert batch["position_ids"].tolist() == pos.tolist()
    assert batch["attention_mask"].tolist() == (seg >= 0).astype(int).tolist()
    if packing:
        assert batch["segment_ids"].tolist() == seg.tolist()
    order = [i for row in rows for i in row]
    kept = torch.cat([images[i][:encoded[i].n_images_used] for i in order])
    assert torch.equal(batch["image"], kept)
    assert batch["images_per_row"] == [sum(encoded[i].n_images_used for i in row) for row in rows]
    assert batch["truncation"]["samples"] == sum(e.truncated for e in encoded) > 0
