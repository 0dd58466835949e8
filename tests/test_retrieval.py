"""Retrieval recall metric and the `retrieval` task's evaluation loop."""
import pytest
import torch
import torch.nn.functional as F

from lavis_lite.common.registry import registry
from lavis_lite.models.blip2_qformer import BlipOutputFeatures
from lavis_lite.tasks.retrieval import RetrievalTask, recall_at_k, retrieval_ground_truth


def test_recall_hand_worked():
    # 3 images, 2 captions each: image i owns texts 2i, 2i+1.
    img2txt = [[0, 1], [2, 3], [4, 5]]
    txt2img = [0, 0, 1, 1, 2, 2]
    s = torch.tensor([
        [0.9, 0.1, 0.2, 0.3, 0.0, 0.0],  # image 0: best right text first -> rank 0
        [0.5, 0.9, 0.1, 0.8, 0.0, 0.0],  # image 1: best right (0.8) behind 0.9 -> rank 1
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],  # image 2: best right (0.5) behind 4 -> rank 4
    ])
    m = recall_at_k(s, s.t(), img2txt, txt2img, ks=(1, 2, 5), tie_mode="expected")
    assert m["txt_r1"] == pytest.approx(100 / 3)
    assert m["txt_r2"] == pytest.approx(200 / 3)
    assert m["txt_r5"] == pytest.approx(100.0)
    # text->image, per column of s: t0 [.9,.5,.9] right img0 ties with img2 -> rank 0.5;
    # t1 [.1,.9,.8] -> 2; t2 [.2,.1,.7] -> 2; t3 [.3,.8,.6] -> 0; t4 [0,0,.5] -> 0; t5 [0,0,.1] -> 0
    assert m["img_r1"] == pytest.approx(400 / 6)
    assert m["img_r2"] == pytest.approx(400 / 6)
    assert m["img_r5"] == pytest.approx(100.0)
    assert m["agg_metrics"] == pytest.approx(m["txt_r_mean"])
    assert m["r_mean"] == pytest.approx((m["txt_r_mean"] + m["img_r_mean"]) / 2)


def test_ties_rank_in_the_middle():
    s = torch.zeros(4, 4)  # constant scores: 3 wrong candidates tie -> expected rank 1.5
    m = recall_at_k(s, s, [[i] for i in range(4)], list(range(4)), ks=(1, 2), tie_mode="expected")
    assert m["txt_r1"] == 0.0 and m["img_r1"] == 0.0
    assert m["txt_r2"] == 100.0 and m["img_r2"] == 100.0
    # one wrong candidate tying with the right one: rank 0.5 -> still a hit at 1
    s = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert recall_at_k(s, s.t(), [[0], [1], [2]], [0, 1, 2], ks=(1,), tie_mode="expected")["txt_r1"] == 100.0


def test_recall_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="ground truth"):
        recall_at_k(torch.zeros(2, 3), torch.zeros(3, 2), [[0]], [0, 0, 1])
    with pytest.raises(ValueError, match="no ground-truth"):
        recall_at_k(torch.zeros(1, 1), torch.zeros(1, 1), [[]], [0])


class _Split(torch.utils.data.Dataset):
    """An eval caption split: one item per image; captions in the annotation."""

    def __init__(self, n=5):
        self.annotation = [{"image": f"img{i}.png", "image_id": i, "caption": [f"caption {i} a", f"caption {i} b"]}
                           for i in range(n)]
        self.text_processor = lambda s: s.upper()

    def __len__(self):
        return len(self.annotation)

    def __getitem__(self, i):
        return {"image": torch.full((3, 2, 2), float(i)), "image_id": i}

    @staticmethod
    def collater(items):
        return {"image": torch.stack([x["image"] for x in items]), "image_id": [x["image_id"] for x in items]}


class _Oracle(torch.nn.Module):
    """Features that put image i and its captions on axis i (or, reversed, on another axis)."""

    def __init__(self, shift=0, n=5):
        super().__init__()
        self.shift, self.n = shift, n
        self.w = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return torch.device("cpu")

    def extract_features(self, samples, mode):
        if mode == "image":
            idx = samples["image"][:, 0, 0, 0].long()
            proj = F.one_hot((idx + self.shift) % self.n, self.n).float()[:, None].repeat(1, 2, 1)
            return BlipOutputFeatures(image_embeds_proj=proj, image_embeds_frozen=samples["image"].flatten(1)[:, None])
        idx = torch.tensor([int(t.split()[1]) for t in samples["text_input"]])
        assert all(t.isupper() for t in samples["text_input"])  # the split's text processor ran
        return BlipOutputFeatures(text_embeds_proj=F.one_hot(idx, self.n).float()[:, None])


@pytest.mark.parametrize("shift,expected", [(0, 100.0), (1, 0.0)])
def test_task_evaluation_end_to_end(shift, expected):
    task = RetrievalTask(k_test=0)
    assert registry.get_task_class("retrieval") is RetrievalTask
    ds = _Split()
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=ds.collater)
    result = task.evaluation(_Oracle(shift), loader)
    metrics = task.after_evaluation(result, "test", 0)
    assert metrics["txt_r1"] == expected and metrics["img_r1"] == expected
    assert 0 <= metrics["agg_metrics"] <= 100


def test_ground_truth_merges_records_of_one_image():
    class D:
        annotation = [{"image": "a.png", "caption": "one"}, {"image": "b.png", "caption": "two"},
                      {"image": "a.png", "caption": "three"}]
    ids, texts, img2txt, txt2img = retrieval_ground_truth(D())
    assert ids == ["a.png", "b.png"] and texts == ["one", "two", "three"]
    assert img2txt == [[0, 2], [1]] and txt2img == [0, 1, 0]

    class Bad:
        annotation = [{"image": "a.png"}]
    with pytest.raises(KeyError, match="record 0 .*caption"):
        retrieval_ground_truth(Bad())


def test_itm_rerank_with_tiny_model():
    from lavis_lite.models.blip2_qformer import Blip2Qformer

    torch.manual_seed(0)
    model = Blip2Qformer.from_pretrained("tiny")

    class Split(_Split):
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"image": torch.randn(3, 32, 32, generator=g), "image_id": i}
    ds = Split(4)
    ds.text_processor = None
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=ds.collater)
    calls = []
    real = model.itm_scores
    model.itm_scores = lambda img, texts: calls.append(len(texts)) or real(img, texts)
    metrics = RetrievalTask(k_test=3).after_evaluation(RetrievalTask(k_test=3).evaluation(model, loader), "val", 0)
    assert calls == [3] * (4 + 8)  # every image and every text query re-ranks its top 3
    for k in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "agg_metrics"):
        assert 0.0 <= metrics[k] <= 100.0
    assert metrics["txt_r10"] == 100.0  # fewer than 10 candidates


def test_ground_truth_from_the_caption_eval_split(tmp_path):
    """The demo's Karpathy-format val split, through the registered `caption` builder."""
    import json
    from PIL import Image
    from lavis_lite.common.registry import registry as reg

    (tmp_path / "images").mkdir()
    records = []
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / "images" / f"{i}.png")
        records.append({"image": f"{i}.png", "caption": [f"cap {i} x", f"cap {i} y"], "image_id": 10 + i})
    (tmp_path / "val.json").write_text(json.dumps(records))
    builder = reg.get_builder_class("caption")({
        "build_info": {"annotations": {"val": {"storage": str(tmp_path / "val.json")}},
                       "images": {"storage": str(tmp_path / "images")}},
        "vis_processor": {"eval": {"name": "blip2_image_eval", "image_size": 32}},
        "text_processor": {"eval": {"name": "blip_caption"}}})
    val = builder.build_datasets()["val"]
    ids, texts, img2txt, txt2img = retrieval_ground_truth(val)
    assert ids == ["10", "11", "12"]
    assert texts == ["cap 0 x", "cap 0 y", "cap 1 x", "cap 1 y", "cap 2 x", "cap 2 y"]
    assert img2txt == [[0, 1], [2, 3], [4, 5]] and txt2img == [0, 0, 1, 1, 2, 2]
