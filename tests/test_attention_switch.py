"""vision_attn_implementation: sdpa (default) and eager give the same ViT / Q-Former outputs."""
import pytest
import torch

from lavis_lite.models.attention import attention, set_attn_implementation
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen


def test_eager_equals_sdpa_with_additive_and_boolean_masks():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    allowed = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    allowed[..., 0] = True  # every row attends somewhere
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    for mask in (None, allowed, additive):
        torch.testing.assert_close(attention(q, k, v, mask, implementation="eager"),
                                   attention(q, k, v, mask, implementation="sdpa"), atol=1e-6, rtol=1e-5)


def test_model_switch_reaches_every_vision_attention_layer_and_keeps_outputs():
    torch.manual_seed(0)
    model = Minigpt4Qwen.from_pretrained("tiny").eval()
    image = torch.randn(2, 3, 32, 32)
    sdpa = model.encode_image(image, stage="pixels", upto="qformer")
    eager = Minigpt4Qwen.from_pretrained("tiny", vision_attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    layers = [m for m in list(eager.visual_encoder.modules()) + list(eager.Qformer.modules())
              if hasattr(m, "attn_implementation")]
    n_vit, n_q = len(eager.visual_encoder.blocks), len(eager.Qformer.bert.encoder.layer)
    assert len(layers) >= n_vit + n_q and {m.attn_implementation for m in layers} == {"eager"}
    torch.testing.assert_close(eager.encode_image(image, stage="pixels", upto="qformer"), sdpa, atol=1e-5, rtol=1e-4)
    assert set_attn_implementation(eager.visual_encoder, "sdpa") == n_vit


def test_unknown_implementation_is_named():
    with pytest.raises(ValueError, match="vision_attn_implementation.*'flash3'"):
        Minigpt4Qwen.from_pretrained("tiny", vision_attn_implementation="flash3")
