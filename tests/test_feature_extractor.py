"""blip2_feature_extractor: load_model_and_preprocess, the three feature modes, similarity."""
import pytest
import torch
from PIL import Image

from lavis_lite.models import load_model_and_preprocess
from lavis_lite.models.blip2_feature_extractor import Blip2FeatureExtractor, image_text_similarity


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return load_model_and_preprocess("blip2_feature_extractor", "tiny", is_eval=True, device="cpu")


def _images(vis):
    pics = [Image.new("RGB", (48, 40), c) for c in ((220, 40, 40), (40, 80, 220))]
    return torch.stack([vis["eval"](p) for p in pics])


def test_load_model_and_preprocess(loaded):
    model, vis, txt = loaded
    assert isinstance(model, Blip2FeatureExtractor) and not model.training
    image = _images(vis)
    assert image.shape == (2, 3, 32, 32) and image.dtype == torch.float32
    assert txt["eval"]("A Red   circle!!") == "a red circle"


def test_features_of_each_mode(loaded):
    model, vis, txt = loaded
    image = _images(vis)
    texts = [txt["eval"](t) for t in ("a red circle", "a blue square on a white background")]
    Q, H, D = model.query_tokens.shape[1], model.Qformer.config.hidden_size, model.vision_proj.out_features

    img = model.extract_features({"image": image}, mode="image")
    assert img.image_embeds.shape == (2, Q, H) and img.image_embeds_proj.shape == (2, Q, D)
    torch.testing.assert_close(img.image_embeds_proj.norm(dim=-1), torch.ones(2, Q))
    assert img.text_embeds is None and img.multimodal_embeds is None

    tx = model.extract_features({"text_input": texts}, mode="text")
    T = tx.text_embeds.shape[1]
    assert tx.text_embeds.shape == (2, T, H) and tx.text_embeds_proj.shape == (2, T, D)
    torch.testing.assert_close(tx.text_embeds_proj.norm(dim=-1), torch.ones(2, T))
    assert tx.image_embeds is None

    mm = model.extract_features({"image": image, "text_input": texts}, mode="multimodal")
    assert mm.multimodal_embeds.shape == (2, Q, H)
    # The multimodal query outputs depend on the text (queries and text attend to each other) ...
    swapped = model.extract_features({"image": image, "text_input": texts[::-1]}, mode="multimodal")
    assert not torch.allclose(mm.multimodal_embeds, swapped.multimodal_embeds)
    # ... and per sample only on that sample's own inputs.
    single = model.extract_features({"image": image[:1], "text_input": texts[:1]}, mode="multimodal")
    torch.testing.assert_close(single.multimodal_embeds[0], mm.multimodal_embeds[0], rtol=1e-4, atol=1e-5)


def test_similarity_as_in_lavis_example(loaded):
    model, vis, txt = loaded
    image = _images(vis)
    texts = ["a red circle", "a blue square", "two stars"]
    img = model.extract_features({"image": image}, mode="image")
    tx = model.extract_features({"text_input": texts}, mode="text")
    sim = image_text_similarity(img, tx)
    assert sim.shape == (2, 3)
    # LAVIS: (image_embeds_proj @ text_embeds_proj[:, 0, :].t()).max() per pair
    for i in range(2):
        for t in range(3):
            ref = (img.image_embeds_proj[i] @ tx.text_embeds_proj[t, 0]).max()
            assert sim[i, t].item() == pytest.approx(ref.item(), abs=1e-6)
    torch.testing.assert_close(model.similarity(image, texts), sim)
    assert sim.abs().max() <= 1.0 + 1e-5


def test_bad_requests(loaded):
    model, vis, _ = loaded
    with pytest.raises(ValueError, match="mode"):
        model.extract_features({"image": _images(vis)}, mode="both")
    with pytest.raises(KeyError, match="text_input"):
        model.extract_features({"image": _images(vis)}, mode="multimodal")
    img = model.extract_features({"image": _images(vis)}, mode="image")
    with pytest.raises(ValueError, match="mode='text'"):
        image_text_similarity(img, img)
