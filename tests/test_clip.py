"""clip_feature_extractor: LAVIS's key map, equality with open_clip's own model on the same weights,
local checkpoint loading (and its errors), processors, zero-shot classification, lazy import."""
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

open_clip = pytest.importorskip("open_clip")

from lavis_lite.models import load_model_and_preprocess  # noqa: E402
from lavis_lite.models.base_model import CheckpointMismatchError  # noqa: E402
from lavis_lite.models.clip import ClipFeatureExtractor, ClipOutputFeatures  # noqa: E402
from lavis_lite.models.clip.clip_feature_extractor import import_open_clip  # noqa: E402
from lavis_lite.processors import load_processor  # noqa: E402

KEYS = os.path.join(os.path.dirname(__file__), "fixtures", "lavis_keys")
TEXTS = ["a red circle", "a blue square on a white background", "two green triangles"]


def _cfg(model_type, **overrides):
    cfg = OmegaConf.load(ClipFeatureExtractor.default_config_path(model_type)).model
    return OmegaConf.merge(cfg, overrides)


def _meta(model_type):
    return ClipFeatureExtractor.from_config(_cfg(model_type, load_pretrained=False), device="meta")


@pytest.fixture(scope="module")
def reference():
    """open_clip's own tiny model (random init) and its weights saved as an open_clip checkpoint."""
    import_open_clip()
    torch.manual_seed(0)
    return open_clip.create_model("lavis-lite-tiny").eval()


@pytest.fixture(scope="module")
def weights_file(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "open_clip_tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "epoch": 3}, path)
    return str(path)


@pytest.fixture(scope="module")
def ours(weights_file):
    return ClipFeatureExtractor.from_config(_cfg("tiny", load_pretrained=True, pretrained=weights_file)).eval()


def _images(n=2, size=32):
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size)


# ---- structure -----------------------------------------------------------------------
def test_vit_b32_matches_lavis_key_map_key_for_key_and_shape_for_shape():
    model = _meta("ViT-B-32")
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = json.load(open(os.path.join(KEYS, "clip_feature_extractor__ViT-B-32.json")))
    info = json.load(open(os.path.join(KEYS, "_info_clip_feature_extractor__ViT-B-32.json")))
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: got[k] for k in want} == want
    assert len(got) == info["n_keys"] and sum(v.numel() for v in model.state_dict().values()) == info["n_elements"]
    assert {str(v.dtype) for v in model.state_dict().values()} == set(info["dtypes"])
    # OpenAI's weights need QuickGELU, as LAVIS builds them
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert isinstance(model, open_clip.CLIP) and isinstance(model, ClipFeatureExtractor)


def test_lavis_model_types_build_with_their_open_clip_architectures():
    assert set(ClipFeatureExtractor.PRETRAINED_MODEL_CONFIG_DICT) == {
        "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "RN50", "tiny"}
    expect = {"ViT-B-16": ("visual.positional_embedding", [197, 768]),
              "ViT-L-14-336": ("visual.positional_embedding", [577, 1024]),
              "RN50": ("visual.attnpool.positional_embedding", [50, 2048])}
    for model_type, (key, shape) in expect.items():
        sd = _meta(model_type).state_dict()
        assert list(sd[key].shape) == shape, model_type
    assert ClipFeatureExtractor.default_config_path("base") == ClipFeatureExtractor.default_config_path("ViT-B-32")
    for model_type in ClipFeatureExtractor.PRETRAINED_MODEL_CONFIG_DICT:  # LAVIS's image sizes per type
        cfg = OmegaConf.load(ClipFeatureExtractor.default_config_path(model_type))
        size = cfg.model.preprocess.vis_processor.eval.image_size
        arch = open_clip.get_model_config(cfg.model.open_clip_name)
        assert size == arch["vision_cfg"]["image_size"], model_type


def test_open_clip_and_lmms_eval_are_imported_on_first_use_only():
    code = ("import sys, lavis_lite, lavis_lite.models, lavis_lite.processors; "
            "from lavis_lite.common.registry import registry; registry.get_model_class('clip'); "
            "print('open_clip' in sys.modules, 'lmms_eval' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# ---- equality with open_clip ----------------------------------------------------------
def test_outputs_equal_open_clip_on_the_same_weights(ours, reference):
    images = _images()
    tokens = open_clip.get_tokenizer("lavis-lite-tiny")(TEXTS)
    assert torch.equal(ours.tokenize(TEXTS), tokens)
    with torch.no_grad():
        want_img, want_txt = reference.encode_image(images), reference.encode_text(tokens)
        f = ours.extract_features({"image": images, "text_input": TEXTS})
        assert isinstance(f, ClipOutputFeatures)
        torch.testing.assert_close(f.image_embeds, want_img, rtol=0, atol=1e-6)
        torch.testing.assert_close(f.text_embeds, want_txt, rtol=0, atol=1e-6)
        torch.testing.assert_close(f.image_embeds_proj, reference.encode_image(images, normalize=True), rtol=0, atol=1e-6)
        torch.testing.assert_close(f.text_embeds_proj, reference.encode_text(tokens, normalize=True), rtol=0, atol=1e-6)
        # one modality: LAVIS returns that side's raw embeddings
        torch.testing.assert_close(ours.extract_features({"image": images}), want_img, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.extract_features({"text_input": TEXTS}), want_txt, rtol=0, atol=1e-6)
        logits, _ = reference.get_logits(images, tokens)
        torch.testing.assert_close(ours.logit_scale.exp() * f.image_embeds_proj @ f.text_embeds_proj.t(), logits,
                                   rtol=1e-5, atol=1e-5)
    # the checkpoint really was the reference's weights (not a fresh init that happens to agree)
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_contrastive_loss_is_open_clips_symmetric_cross_entropy(ours):
    images = _images(3)
    out = ours({"image": images, "text_input": TEXTS})
    f = ours.extract_features({"image": images, "text_input": TEXTS})
    logits = ours.logit_scale.exp() * f.image_embeds_proj @ f.text_embeds_proj.t()
    labels = torch.arange(3)
    want = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(out["loss"], want)
    assert out["n_tokens"] == 3 and out["loss"].requires_grad
    with pytest.raises(KeyError, match="text_input"):
        ours({"image": images})


# ---- checkpoints ----------------------------------------------------------------------
def test_checkpoint_formats_safetensors_and_torchscript(reference, tmp_path):
    from safetensors.torch import save_file

    st = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(st))
    jit = tmp_path / "tiny_openai_style.pt"  # OpenAI's releases are TorchScript archives
    torch.jit.script(reference).save(str(jit))
    images = _images(1)
    with torch.no_grad():
        want = reference.encode_image(images)
        for path in (st, jit):
            model = ClipFeatureExtractor.from_config(_cfg("tiny", load_pretrained=True, pretrained=str(path))).eval()
            torch.testing.assert_close(model.encode_image(images), want, rtol=0, atol=1e-6)
    # our fine-tuned weights (`checkpoint`) load over the open_clip ones
    tuned = tmp_path / "tuned.safetensors"
    save_file({"logit_scale": torch.tensor(2.5), "ln_final.bias": torch.full((32,), 0.25)}, str(tuned))
    # a file with only some trainable parameters is refused unless the partial load is asked for
    with pytest.raises(CheckpointMismatchError, match="lacks .* trainable parameter"):
        ClipFeatureExtractor.from_config(_cfg("tiny", load_pretrained=True, pretrained=str(st), checkpoint=str(tuned)))
    model = ClipFeatureExtractor.from_config(_cfg("tiny", load_pretrained=True, pretrained=str(st),
                                                  checkpoint=str(tuned), partial_load=True))
    assert float(model.logit_scale) == 2.5 and torch.equal(model.ln_final.bias, torch.full((32,), 0.25))
    assert torch.equal(model.visual.conv1.weight, reference.visual.conv1.weight)


def test_missing_unset_tagged_or_mismatching_checkpoints_are_clear_errors(reference, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained is not set"):
        ClipFeatureExtractor.from_config(_cfg("ViT-B-32"), device="meta")
    missing = tmp_path / "nowhere" / "ViT-B-32.pt"
    with pytest.raises(FileNotFoundError, match=r"model\.pretrained = .*nowhere/ViT-B-32\.pt.*never downloaded"):
        ClipFeatureExtractor.from_config(_cfg("ViT-B-32", pretrained=str(missing)), device="meta")
    with pytest.raises(FileNotFoundError, match="'openai' is an open_clip download tag"):
        ClipFeatureExtractor.from_config(_cfg("ViT-B-32", pretrained="openai"), device="meta")
    bad = tmp_path / "bad.pt"
    state = dict(reference.state_dict())
    state["text_projection"] = torch.zeros(8, 8)
    torch.save(state, bad)
    with pytest.raises(CheckpointMismatchError, match=r"bad\.pt.*text_projection"):
        ClipFeatureExtractor.from_config(_cfg("tiny", load_pretrained=True, pretrained=str(bad)))
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in reference.state_dict().items() if not k.startswith("ln_final")}, partial)
    with pytest.raises(CheckpointMismatchError, match="ln_final"):
        ClipFeatureExtractor.from_config(_cfg("tiny", load_pretrained=True, pretrained=str(partial)))
    with pytest.raises(FileNotFoundError, match="model.checkpoint"):
        ClipFeatureExtractor.from_config(_cfg("tiny", checkpoint=str(tmp_path / "ft.safetensors")))
    with pytest.raises(KeyError, match="pretrainde"):
        ClipFeatureExtractor.from_config(_cfg("tiny", pretrainde="x"))
    with pytest.raises(KeyError, match="not an open_clip architecture"):
        ClipFeatureExtractor.from_config(_cfg("tiny", open_clip_name="ViT-Q-99"))


# ---- entry point, processors ------------------------------------------------------------
def test_load_model_and_preprocess_tiny_and_processors_match_open_clip():
    model, vis, txt = load_model_and_preprocess("clip_feature_extractor", "tiny", is_eval=True)
    assert not model.training and isinstance(model, ClipFeatureExtractor)
    image = Image.new("RGB", (60, 40), (200, 30, 30))
    image.paste((20, 20, 220), (0, 0, 20, 40))
    tensor = vis["eval"](image)
    assert torch.equal(tensor, open_clip.image_transform(32, is_train=False)(image))
    assert txt["eval"]("A Red Circle!") == "A Red Circle!"  # LAVIS gives CLIP no text processor
    torch.manual_seed(3)
    ours_train = vis["train"](image)
    torch.manual_seed(3)
    assert torch.equal(ours_train, open_clip.image_transform(32, is_train=True)(image))  # scale (0.9, 1.0)
    f = model.extract_features({"image": tensor[None], "text_input": ["a red square"]})
    assert f.image_embeds.shape == (1, 32) and f.text_embeds_proj.shape == (1, 32)
    torch.testing.assert_close(f.image_embeds_proj.norm(dim=-1), torch.ones(1))
    assert load_processor("clip_image_eval", {"image_size": 336}).transform.transforms[1].size == (336, 336)
    with pytest.raises(ValueError, match="min_scale"):
        load_processor("clip_image_train", {"min_scale": 0.0})


# ---- zero-shot -----------------------------------------------------------------------------
def test_zero_shot_classifier_and_logits(ours):
    classnames, templates = ["circle", "square"], ["a photo of a {}.", lambda c: f"a drawing of a {c}."]
    classifier = ours.zero_shot_classifier(classnames, templates)
    assert classifier.shape == (32, 2)
    with torch.no_grad():  # by hand: normalise each prompt, average per class, renormalise
        for j, name in enumerate(classnames):
            emb = ours.encode_text(ours.tokenize([f"a photo of a {name}.", f"a drawing of a {name}."]), normalize=True)
            mean = emb.mean(0)
            torch.testing.assert_close(classifier[:, j], mean / mean.norm())
        images = _images(3)
        logits = ours.zero_shot_logits(images, classifier)
        feats = ours.encode_image(images, normalize=True)
    torch.testing.assert_close(logits, 100.0 * feats @ classifier)
    assert ours.zero_shot_classifier(["circle"]).shape == (32, 1)  # OpenAI's 80 ImageNet prompts by default
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        ours.zero_shot_classifier(classnames, ["a photo"])

    class Dataset:  # LAVIS's classification hook: the dataset's class names become the classifier
        classnames, templates = ["circle", "square"], ["a photo of a {}.", lambda c: f"a drawing of a {c}."]

    ours.before_evaluation(dataset=Dataset(), task_type=None)
    out = ours.predict({"image": images, "label": torch.tensor([0, 1, 0])})
    torch.testing.assert_close(out["predictions"], logits)
    assert out["targets"].tolist() == [0, 1, 0]
    ours.classifier = None


def test_mode_features_run_the_retrieval_task(ours):
    from lavis_lite.tasks.retrieval import RetrievalTask, recall_at_k

    images, captions = _images(3), ["a red circle", "a blue square", "a green triangle", "two red circles"]
    img = ours.extract_features({"image": images}, mode="image")
    assert img.image_embeds_proj.shape == (3, 1, 32) and img.text_embeds is None
    txt = ours.extract_features({"text_input": captions}, mode="text")
    assert txt.text_embeds_proj.shape == (4, 1, 32)
    torch.testing.assert_close(img.image_embeds[:, 0], ours.extract_features({"image": images}))
    with pytest.raises(ValueError, match="multimodal"):
        ours.extract_features({"image": images}, mode="multimodal")

    class Split(torch.utils.data.Dataset):  # image 0 has two captions
        annotation = [{"image_id": 0, "caption": [captions[0], captions[3]]}, {"image_id": 1, "caption": captions[1]},
                      {"image_id": 2, "caption": captions[2]}]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"image": images[i], "image_id": i}

    loader = torch.utils.data.DataLoader(Split(), batch_size=2)
    (metrics,) = RetrievalTask(k_test=0).evaluation(ours, loader)
    with torch.no_grad():
        sim = ours.encode_image(images, normalize=True) @ ours.encode_text(ours.tokenize(captions), normalize=True).t()
    assert metrics == recall_at_k(sim, sim.t(), [[0, 3], [1], [2]], [0, 1, 2, 0])
