"""Our BLIP-2 models -> Hugging Face folders transformers loads with the same outputs, and back (CLI)."""
import logging

import pytest
import torch
from safetensors.torch import save_file

from blip2_hf_helpers import KIND_FAMILY, assert_same_as_hf, build_hf, images, randomize
from lavis_lite.models import load_model
from lavis_lite.tools.convert import main as convert


def _ours(arch):
    model = load_model(arch, "tiny", is_eval=True)
    randomize(model, seed=5)
    model.ln_vision.eps = 1e-6  # HF has one vision epsilon; see the eps test below
    return model


@pytest.mark.parametrize("arch", sorted(KIND_FAMILY))
def test_ours_to_hf_and_back(arch, tmp_path):
    import transformers

    ours = _ours(arch)
    from lavis_lite.models.hf_blip2_export import export_hf
    name = export_hf(ours, str(tmp_path / "hf"))
    assert name == ("Blip2ForConditionalGeneration" if KIND_FAMILY[arch][0] == "blip2"
                    else "InstructBlipForConditionalGeneration")
    hf = getattr(transformers, name).from_pretrained(tmp_path / "hf").eval()
    assert_same_as_hf(ours, hf, arch)

    # round trip through the CLI: HF -> ours folder -> the same weights
    convert(["--from", "hf", "--to", "lavis", str(tmp_path / "hf"), str(tmp_path / "ours")])
    back = load_model(arch, checkpoint=str(tmp_path / "ours"), is_eval=True)
    before, after = ours.state_dict(), back.state_dict()
    assert set(before) == set(after)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert back.ln_vision.eps == 1e-6


def test_lavis_ln_vision_eps_is_reported_and_close(tmp_path, caplog):
    import transformers

    ours = load_model("blip2_opt", "tiny", is_eval=True)
    randomize(ours, seed=6)
    from lavis_lite.models.hf_blip2_export import export_hf
    with caplog.at_level(logging.WARNING):
        export_hf(ours, str(tmp_path))
    assert "one vision LayerNorm epsilon" in caplog.text
    hf = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        pixels = images(7)
        diff = (ours.vit_features(pixels) - hf.vision_model(pixels).last_hidden_state).abs().max()
    assert 0 < diff < 1e-3  # only the epsilon differs


def test_stage1_checkpoint_to_blip2model_vision_qformer(tmp_path):
    import transformers

    stage1 = load_model("blip2", "tiny", is_eval=True)
    randomize(stage1, seed=8)
    weights = tmp_path / "stage1.safetensors"
    save_file({k: v.contiguous() for k, v in stage1.state_dict().items()}, str(weights))
    convert(["--from", "lavis", "--to", "hf", str(weights), str(tmp_path / "hf"), "--arch", "blip2",
             "--model-type", "tiny", "--vision-only"])
    hf = transformers.Blip2Model.from_pretrained(tmp_path / "hf").eval()
    pixels = images(9)
    with torch.no_grad():
        ours_query = stage1.encode_queries(stage1.encode_image(pixels)).last_hidden_state
        hf_query = hf.get_qformer_features(pixels)
        hf_query = getattr(hf_query, "last_hidden_state", hf_query)
    torch.testing.assert_close(ours_query, hf_query, atol=1e-3, rtol=0)  # ln_vision eps 1e-5 vs HF's 1e-6
    # the same folder initialises a BLIP-2 OPT's vision side and Q-Former (model.q_former_model)
    opt = load_model("blip2_opt", "tiny", is_eval=True)
    opt.load_initial_weights(str(tmp_path / "hf"))
    with torch.no_grad():
        torch.testing.assert_close(opt.query_output(opt.vit_features(pixels)), hf_query, atol=1e-5, rtol=0)


def test_hf_folder_to_lavis_and_back_is_identical(tmp_path):
    build_hf(tmp_path / "src", "blip2", "opt", seed=2)
    convert(["--from", "hf", "--to", "lavis", str(tmp_path / "src"), str(tmp_path / "ours")])
    convert(["--from", "lavis", "--to", "hf", str(tmp_path / "ours"), str(tmp_path / "hf")])
    from lavis_lite.models.hf_blip2_convert import read_hf_state
    a, b = read_hf_state(str(tmp_path / "src")), read_hf_state(str(tmp_path / "hf"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_export_adds_an_image_row_when_the_vocabulary_has_none(tmp_path, caplog):
    import transformers

    from lavis_lite.models.hf_blip2_export import export_hf
    from omegaconf import OmegaConf
    from lavis_lite.common.registry import registry
    cls = registry.get_model_class("blip2_vicuna_instruct")
    cfg = OmegaConf.load(cls.default_config_path("tiny")).model
    cfg.llm_config.vocab_size = None  # one row per token, as LAVIS's Vicuna (32001 for 32001)
    ours = randomize(cls.from_config(cfg), seed=11).eval()
    rows = ours.llm_model.get_input_embeddings().weight.shape[0]
    assert rows == len(ours.llm_tokenizer)
    with caplog.at_level(logging.WARNING):
        export_hf(ours, str(tmp_path))
    assert "no spare embedding row" in caplog.text
    hf = transformers.InstructBlipForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert hf.config.image_token_index == rows and hf.get_input_embeddings().weight.shape[0] == rows + 1
    torch.testing.assert_close(hf.get_input_embeddings().weight[:rows], ours.llm_model.get_input_embeddings().weight)
