"""ITC / ITM helpers of BLIP-2 stage 1 on fixed embeddings, including a 2-process all-gather."""
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from lavis_lite.models import blip2_losses as L


def _hand_itc(img, txt, ids, temp, smoothing=0.1):
    """Plain-Python BLIP-2 ITC: max over queries, soft targets by image id, label smoothing."""
    B = len(txt)
    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))
    sim_i2t = [[max(dot(q, txt[w]) for q in img[b]) / temp for w in range(B)] for b in range(B)]
    sim_t2i = [[max(dot(txt[b], q) for q in img[w]) / temp for w in range(B)] for b in range(B)]
    def ce(row, b):
        pos = [1.0 if ids[b] == ids[w] else 0.0 for w in range(B)]
        tgt = [(1 - smoothing) * p / sum(pos) + smoothing / B for p in pos]
        lse = math.log(sum(math.exp(x) for x in row))
        return -sum(t * (x - lse) for t, x in zip(tgt, row))
    li2t = sum(ce(sim_i2t[b], b) for b in range(B)) / B
    lt2i = sum(ce(sim_t2i[b], b) for b in range(B)) / B
    return (li2t + lt2i) / 2


def _fixed_feats():
    img = [[[1.0, 0.0], [0.6, 0.8]],
           [[0.0, 1.0], [-0.6, 0.8]],
           [[0.8, -0.6], [0.0, -1.0]]]
    txt = [[1.0, 0.0], [0.0, 1.0], [0.6, -0.8]]
    return img, txt


@pytest.mark.parametrize("ids", [[0, 1, 2], [5, 5, 7]])
def test_itc_equals_hand_computed(ids):
    img, txt = _fixed_feats()
    temp = 0.5
    image_feats, text_feat = torch.tensor(img), torch.tensor(txt)
    sim_i2t, sim_t2i = L.itc_similarities(image_feats, text_feat, image_feats, text_feat, torch.tensor(temp))
    # query max: image 0 vs text 1 -> max(0, 0.8) = 0.8
    assert sim_i2t[0, 1].item() == pytest.approx(0.8 / temp)
    assert sim_t2i[1, 0].item() == pytest.approx(0.8 / temp)
    ids_t = L.image_ids_to_tensor(ids)
    targets = L.itc_targets(L.same_id_mask(ids_t, ids_t))
    loss = L.itc_loss(sim_i2t, sim_t2i, targets)
    assert loss.item() == pytest.approx(_hand_itc(img, txt, ids, temp), rel=1e-6)


def test_itc_with_unique_ids_equals_label_smoothed_cross_entropy():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 3, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    sim_i2t, sim_t2i = L.itc_similarities(img, txt, img, txt, torch.tensor(0.07))
    ids = torch.arange(4)
    loss = L.itc_loss(sim_i2t, sim_t2i, L.itc_targets(L.same_id_mask(ids, ids)))
    ref = (F.cross_entropy(sim_i2t, ids, label_smoothing=0.1) + F.cross_entropy(sim_t2i, ids, label_smoothing=0.1)) / 2
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_temperature_clamp_and_bad_targets():
    t = torch.nn.Parameter(torch.tensor(0.0001))
    L.clamp_temperature_(t)
    assert t.item() == pytest.approx(0.001)
    t.data.fill_(3.0)
    L.clamp_temperature_(t)
    assert t.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="own positive"):
        L.itc_targets(torch.zeros(2, 2, dtype=torch.bool))


def test_image_ids_to_tensor():
    assert L.image_ids_to_tensor(torch.tensor([[3], [4]])).tolist() == [3, 4]
    assert L.image_ids_to_tensor([1, "2"]).tolist() == [1, 2]
    a = L.image_ids_to_tensor(["img_a", "img_b", "img_a"])
    assert a[0] == a[2] and a[0] != a[1] and (a >= 0).all()
    with pytest.raises(TypeError, match="image_id 0"):
        L.image_ids_to_tensor([None])


def test_hard_negatives_never_share_image_id_and_follow_similarity():
    ids = torch.tensor([0, 0, 1, 2, 2])
    pos = L.same_id_mask(ids, ids)
    # Make the most similar non-positive candidate overwhelmingly likely.
    sim = torch.zeros(5, 5)
    sim[:, 4] = 50.0  # column 4 has id 2: a positive for rows 3 and 4
    sim[:, 2] = 40.0
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg_img, neg_txt = L.sample_hard_negatives(sim, sim, pos, generator=gen)
        for b in range(5):
            assert ids[neg_img[b]] != ids[b] and ids[neg_txt[b]] != ids[b]
        assert neg_img[:3].tolist() == [4, 4, 4]  # hardest allowed
        assert neg_img[3:].tolist() == [2, 2]      # column 4 excluded as same id
    uniform = torch.zeros(5, 5)
    draws = torch.stack([L.sample_hard_negatives(uniform, uniform, pos, generator=gen)[0] for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {2, 3, 4}  # every other image can be drawn


def test_hard_negatives_when_no_negative_exists():
    ids = torch.tensor([3, 3])
    neg_img, neg_txt = L.sample_hard_negatives(torch.zeros(2, 2), torch.zeros(2, 2), L.same_id_mask(ids, ids))
    assert neg_img.shape == (2,) and neg_txt.shape == (2,)


def test_itm_labels():
    assert L.itm_labels(2).tolist() == [1, 1, 0, 0, 0, 0]


def _full_batch(seed=0, B=6, Q=3, D=4):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(B, Q, D, generator=g)
    txt = torch.randn(B, D, generator=g)
    ids = torch.tensor([0, 1, 1, 2, 3, 0])  # same image on both ranks and within a rank
    return img, txt, ids


def _itc_on(img, txt, ids, temp):
    img_n, txt_n = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    img_all, txt_all = L.gather_with_grad(img_n), L.gather_with_grad(txt_n)
    ids_all = L.gather_no_grad(ids)
    s_i2t, s_t2i = L.itc_similarities(img_n, txt_n, img_all, txt_all, temp)
    return L.itc_loss(s_i2t, s_t2i, L.itc_targets(L.same_id_mask(ids, ids_all)))


def _rank_main(rank, world, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    img, txt, ids = _full_batch()
    per = img.shape[0] // world
    sl = slice(rank * per, (rank + 1) * per)
    img_l = img[sl].clone().requires_grad_(True)
    txt_l = txt[sl].clone().requires_grad_(True)
    loss = _itc_on(img_l, txt_l, ids[sl], torch.tensor(0.1))
    loss.backward()
    torch.save({"loss": loss.detach(), "g_img": img_l.grad, "g_txt": txt_l.grad}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_two_process_itc_equals_one_process_whole_batch(tmp_path):
    world = 2
    mp.spawn(_rank_main, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    img, txt, ids = _full_batch()
    img = img.clone().requires_grad_(True)
    txt = txt.clone().requires_grad_(True)
    full = _itc_on(img, txt, ids, torch.tensor(0.1))
    full.backward()
    res = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]
    # The mean of the ranks' losses (what DDP optimises) is the whole-batch loss ...
    assert torch.stack([r["loss"] for r in res]).mean().item() == pytest.approx(full.item(), rel=1e-5)
    assert res[0]["loss"].item() != pytest.approx(res[1]["loss"].item())
    # ... and so are the gradients once DDP averages them (each rank holds d(sum of losses)).
    per = img.shape[0] // world
    for r in range(world):
        sl = slice(r * per, (r + 1) * per)
        torch.testing.assert_close(res[r]["g_img"] / world, img.grad[sl], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res[r]["g_txt"] / world, txt.grad[sl], rtol=1e-5, atol=1e-6)
