"""Hugging Face BLIP-2 / InstructBLIP folders load into our models and compute what transformers computes."""
import pytest
import torch

from blip2_hf_helpers import KIND_FAMILY, N_QUERY, assert_same_as_hf, build_hf, image_token
from lavis_lite.models import load_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def hf_opt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_blip2_opt")
    return build_hf(folder, "blip2", "opt"), folder


def _images(seed=1, n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_blip2_opt_folder_loads_with_source_numerics(hf_opt):
    hf, folder = hf_opt
    ours = load_model("blip2_opt", "tiny", is_eval=True, checkpoint=str(folder))
    assert ours.ln_vision.eps == 1e-6  # HF post_layernorm's epsilon, not LAVIS's 1e-5
    assert all(b.norm1.eps == 1e-6 for b in ours.visual_encoder.blocks)
    images = _images()
    with torch.no_grad():
        hf_vision = hf.vision_model(images).last_hidden_state
        hf_query = hf.get_image_features(images).qformer_outputs.last_hidden_state
        vit = ours.vit_features(images)
        query = ours.query_output(vit)
    torch.testing.assert_close(vit, hf_vision, atol=ATOL, rtol=0)
    torch.testing.assert_close(query, hf_query, atol=ATOL, rtol=0)

    # loss: ours tokenises text_input + "\n"; HF gets the same ids after N_QUERY image tokens
    texts = ["a red circle", "two blue squares on the left"]
    with torch.no_grad():
        loss = ours({"image": images, "text_input": texts})["loss"]
    tok = ours.opt_tokenizer
    tok.padding_side = "right"
    enc = tok([t + "\n" for t in texts], return_tensors="pt", padding="longest")
    ids = torch.cat([torch.full((2, N_QUERY), image_token("opt")), enc.input_ids], 1)
    mask = torch.cat([torch.ones(2, N_QUERY, dtype=torch.long), enc.attention_mask], 1)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :N_QUERY] = -100
    with torch.no_grad():
        hf_loss = hf(pixel_values=images, input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss, hf_loss, atol=ATOL, rtol=0)

    # greedy generation from a prompt: the same tokens
    prompt = "a photo of"
    ours_text = ours.generate({"image": images, "prompt": prompt}, num_beams=1, max_length=8, min_length=1)
    p = tok([prompt] * 2, return_tensors="pt").input_ids
    ids = torch.cat([torch.full((2, N_QUERY), image_token("opt")), p], 1)
    out = hf.generate(pixel_values=images, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                      min_new_tokens=1, num_beams=1, do_sample=False, eos_token_id=ours.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    hf_text = [t.strip() for t in tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]
    assert ours_text == hf_text
    assert any(hf_text) and hf_text[0] != hf_text[1]  # informative: non-empty and image-dependent


def test_hf_folder_as_q_former_model_takes_vision_and_qformer_only(hf_opt):
    hf, folder = hf_opt
    ours = load_model("blip2_opt", "tiny", is_eval=True)
    before = ours.opt_proj.weight.clone()
    report = ours.load_initial_weights(str(folder))
    assert any(k.startswith("opt_model.") for k in report["left_out"])
    assert torch.equal(ours.opt_proj.weight, before)  # projection and LLM not taken from the folder
    images = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(ours.query_output(ours.vit_features(images)),
                                   hf.get_image_features(images).qformer_outputs.last_hidden_state, atol=ATOL, rtol=0)


def test_hf_folder_of_another_family_is_refused(hf_opt):
    _, folder = hf_opt
    with pytest.raises(ValueError, match="blip2_opt"):
        load_model("blip2_t5", "tiny", checkpoint=str(folder))


@pytest.mark.parametrize("arch", ["blip2_t5", "blip2_vicuna_instruct", "blip2_t5_instruct"])
def test_t5_and_instructblip_folders_match_transformers(arch, tmp_path):
    kind, family = KIND_FAMILY[arch]
    hf = build_hf(tmp_path, kind, family, seed=3)
    ours = load_model(arch, "tiny", is_eval=True, checkpoint=str(tmp_path))
    assert ours.ln_vision.eps == 1e-6
    assert_same_as_hf(ours, hf, arch)


def test_hf_folder_as_q_former_model_of_minigpt4qwen(hf_opt):
    """The issue's failing case: an HF BLIP-2 folder as MiniGPT4-Qwen's q_former_model (tiny sizes match)."""
    from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

    hf, folder = hf_opt
    model = Minigpt4Qwen.from_pretrained("tiny", q_former_model=str(folder)).eval()
    assert model.ln_vision.eps == 1e-6
    pixels = _images(5)
    with torch.no_grad():
        torch.testing.assert_close(model.query_output(model.vit_features(pixels)),
                                   hf.get_image_features(pixels).qformer_outputs.last_hidden_state, atol=ATOL, rtol=0)


def test_sharded_and_bin_folders_read_the_same_tensors(hf_opt, tmp_path):
    from lavis_lite.models.hf_blip2_convert import read_hf_state

    hf, folder = hf_opt
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    single = read_hf_state(str(folder))
    sharded = read_hf_state(str(tmp_path / "sharded"))
    assert set(single) == set(sharded) and all(torch.equal(single[k], sharded[k]) for k in single)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((folder / "config.json").read_text())
    torch.save(single, tmp_path / "bin" / "pytorch_model.bin")
    from_bin = read_hf_state(str(tmp_path / "bin"))
    assert all(torch.equal(single[k], from_bin[k]) for k in single)


def test_unknown_hf_tensor_is_an_error_naming_it(hf_opt, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, folder = hf_opt
    shutil.copytree(folder, tmp_path / "odd")
    state = load_file(str(tmp_path / "odd" / "model.safetensors"))
    state["itm_head.weight"] = torch.zeros(2, 64)
    save_file(state, str(tmp_path / "odd" / "model.safetensors"))
    with pytest.raises(Exception, match="itm_head"):
        load_model("blip2_opt", "tiny", checkpoint=str(tmp_path / "odd"))


def test_convert_cli_writes_a_lavis_layout_pth(hf_opt, tmp_path):
    from lavis_lite.tools.convert import main as convert

    hf, folder = hf_opt
    convert(["--from", "hf", "--to", "lavis", str(folder), str(tmp_path / "out"), "--model-type", "tiny", "--lavis-pth"])
    released = torch.load(tmp_path / "out" / "lavis_checkpoint.pth", weights_only=True)["model"]
    assert "opt_proj.weight" in released and not any(k.startswith("opt_model.") for k in released)
    ours = load_model("blip2_opt", "tiny", checkpoint=str(tmp_path / "out"), is_eval=True)
    assert torch.equal(ours.opt_proj.weight, released["opt_proj.weight"])
