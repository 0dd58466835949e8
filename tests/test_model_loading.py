"""Checkpoints that load or say why not: missing trainable keys raise unless a partial load is asked
for, unreadable files are named, and load_model_and_preprocess reaches a trained checkpoint."""
import os

import pytest
import torch

import lavis_lite  # noqa: F401
from lavis_lite.common import checkpoint as ckpt
from lavis_lite.models import load_model, load_model_and_preprocess
from lavis_lite.models.base_model import CheckpointMismatchError


@pytest.fixture(scope="module")
def tiny_qformer_trainable():
    """The tiny MiniGPT4-Qwen with its Q-Former trainable (as a stage-2 run with freeze_qformer: False)."""
    from lavis_lite.common.registry import registry
    cls = registry.get_model_class("minigpt4qwen")
    torch.manual_seed(0)
    return cls.from_pretrained("tiny", freeze_qformer=False)


def test_checkpoint_missing_trainable_keys_is_an_error_listing_them(tmp_path, tiny_qformer_trainable):
    model = tiny_qformer_trainable
    only_proj = {k: v.clone() + 1.0 for k, v in model.trainable_state_dict().items() if k.startswith("llm_proj.")}
    path = str(tmp_path / "proj_only.safetensors")
    ckpt.save_tensors(only_proj, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        model.load_checkpoint(path)
    msg = str(err.value)
    assert path in msg and "trainable parameter(s)" in msg and "Qformer.bert.encoder.layer.0" in msg
    assert "partial=True" in msg and "partial_load" in msg
    for k, v in model.state_dict().items():  # nothing was half-loaded
        torch.testing.assert_close(v, before[k], msg=k)
    report = model.load_checkpoint(path, partial=True)  # asked for explicitly: loads, reports
    assert report["missing_trainable"] and all(not k.startswith("llm_proj.") for k in report["missing_trainable"])
    torch.testing.assert_close(model.llm_proj.weight, only_proj["llm_proj.weight"])


def test_model_config_partial_load_and_checkpoint_key(tmp_path, tiny_qformer_trainable):
    from lavis_lite.common.registry import registry
    path = str(tmp_path / "proj_only.safetensors")
    ckpt.save_tensors({k: v for k, v in tiny_qformer_trainable.trainable_state_dict().items()
                       if k.startswith("llm_proj.")}, path)
    cls = registry.get_model_class("minigpt4qwen")
    with pytest.raises(CheckpointMismatchError, match="lacks"):
        cls.from_pretrained("tiny", freeze_qformer=False, checkpoint=path)
    model = cls.from_pretrained("tiny", freeze_qformer=False, checkpoint=path, partial_load=True)
    assert model.partial_load is True


@pytest.mark.parametrize("name,content", [("broken.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"),
                                          ("broken.pth", b"this is not a torch file"),
                                          ("no_suffix", b"garbage bytes")])
def test_an_unreadable_checkpoint_names_the_file(tmp_path, tiny_qformer_trainable, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match=f"Could not read checkpoint '{path}'"):
        tiny_qformer_trainable.load_checkpoint(str(path))


def test_load_model_and_preprocess_reaches_a_trained_checkpoint(tmp_path):
    torch.manual_seed(1)
    trained = load_model("minigpt4qwen", "tiny")
    with torch.no_grad():
        trained.llm_proj.weight.add_(0.5)
    weights = str(tmp_path / "trained.safetensors")
    ckpt.save_tensors(trained.trainable_state_dict(), weights)
    model, vis, txt = load_model_and_preprocess("minigpt4qwen", "tiny", is_eval=True, checkpoint=weights)
    torch.testing.assert_close(model.llm_proj.weight, trained.llm_proj.weight)
    assert not model.training and "eval" in vis and "eval" in txt
    # a runner checkpoint folder works the same way
    folder = tmp_path / "checkpoint_0000010"
    folder.mkdir()
    ckpt.save_tensors(trained.trainable_state_dict(), str(folder / ckpt.WEIGHTS_NAME))
    (folder / ckpt.COMPLETE_NAME).write_text("ok\n")
    model2, _, _ = load_model_and_preprocess("minigpt4qwen", "tiny", checkpoint=str(folder))
    torch.testing.assert_close(model2.llm_proj.weight, trained.llm_proj.weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_preprocess("minigpt4qwen", "tiny", checkpoint=str(tmp_path / "nope.safetensors"))
