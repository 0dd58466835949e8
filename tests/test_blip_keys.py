"""Full-size BLIP models (built on the meta device) have LAVIS's key -> shape maps, key for key.

The maps in fixtures/lavis_keys/ are LAVIS 1.0.2's models as built with bert-base-uncased's vocabulary
(30522 + [DEC] + [ENC]); here a stand-in vocab file of that length gives the same vocabulary size.
"""
import json
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

from lavis_lite.common.registry import registry
from lavis_lite.models.bert_tokenizer import TINY_VOCAB

KEYS = os.path.join(os.path.dirname(__file__), "fixtures", "lavis_keys")
CASES = [("blip_caption", "base_coco"), ("blip_caption", "large_coco"), ("blip_vqa", "vqav2"),
         ("blip_feature_extractor", "base"), ("blip_retrieval", "coco")]


@pytest.fixture(scope="module")
def bert_sized_vocab(tmp_path_factory):
    """A vocab.txt of bert-base-uncased's length (30522): the tiny vocab padded with unused tokens."""
    tokens = open(TINY_VOCAB).read().split("\n")
    tokens = [t for t in tokens if t]
    tokens += [f"[unused{i}]" for i in range(30522 - len(tokens))]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return str(path)


def build_meta(name, model_type, vocab, **overrides):
    cls = registry.get_model_class(name)
    cfg = OmegaConf.merge(OmegaConf.load(cls.default_config_path(model_type)).model,
                          {"load_pretrained": False, "tokenizer_vocab": vocab}, overrides)
    with torch.device("meta"):
        return cls.from_config(cfg)


def key_map(name, model_type):
    with open(os.path.join(KEYS, f"{name}__{model_type}.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name,model_type", CASES)
def test_full_size_key_map_matches_lavis(name, model_type, bert_sized_vocab):
    model = build_meta(name, model_type, bert_sized_vocab)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = key_map(name, model_type)
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []  # a released file (the whole model) has no unexpected key
    assert {k: got[k] for k in want} == want
    assert len(model.tokenizer) == 30524 and model.tokenizer.enc_token_id == 30523
    assert model.tokenizer.bos_token_id == 30522


def test_tied_decoder_weights_as_lavis(bert_sized_vocab):
    model = build_meta("blip_caption", "base_coco", bert_sized_vocab)
    head, emb = model.text_decoder.cls.predictions, model.text_decoder.bert.embeddings
    assert head.decoder.weight is emb.word_embeddings.weight
    assert head.decoder.bias is head.bias
    # LAVIS's large model: ViT-L/16 with gradient checkpointing of the last 5 blocks
    large = build_meta("blip_caption", "large_coco", bert_sized_vocab)
    assert len(large.visual_encoder.blocks) == 24 and large.visual_encoder.grad_ckpt_from == 19


@pytest.mark.parametrize("name,reads,own", [
    # the feature extractor reads the pretrain file: its extra parts are the retrieval model's and the decoder
    ("blip_feature_extractor", ["blip_retrieval__coco", "blip_caption__base_coco"], "blip_feature_extractor__base"),
    ("blip_image_text_matching", ["blip_retrieval__coco"], None),
])
def test_extra_keys_of_the_files_a_model_reads_are_droppable(name, reads, own, bert_sized_vocab):
    cls = registry.get_model_class(name)
    model_keys = set(key_map(*own.split("__"))) if own else \
        set(build_meta(name, "base", bert_sized_vocab).state_dict())
    extra = {k for f in reads for k in key_map(*f.split("__")) if k not in model_keys}
    assert extra
    assert all(any(re.match(p, k) for p in cls.DROPPABLE_KEYS) for k in extra), \
        sorted(k for k in extra if not any(re.match(p, k) for p in cls.DROPPABLE_KEYS))[:5]
    # and nothing the model owns is droppable (it would hide a mismatch)
    assert not any(re.match(p, k) for p in cls.DROPPABLE_KEYS for k in model_keys)


def test_every_blip_yaml_holds_only_known_keys():
    for name in ("blip_caption", "blip_vqa", "blip_feature_extractor", "blip_retrieval", "blip_image_text_matching"):
        cls = registry.get_model_class(name)
        for model_type in cls.PRETRAINED_MODEL_CONFIG_DICT:
            cfg = OmegaConf.load(cls.default_config_path(model_type)).model
            assert cfg.arch == name and cfg.model_type == model_type
            cls.constructor_kwargs(cfg)  # raises on an unknown key
            if model_type != "tiny":  # a released file under LAVIS's URL
                assert cfg.load_pretrained and str(cfg.pretrained).endswith(".pth"), (name, model_type)
