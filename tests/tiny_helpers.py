"""Shared by the inference-tool tests: the tiny model's YAML and a way to make its answers informative."""
import torch

TINY_MODEL_YAML = "model:\n  arch: minigpt4qwen\n  model_type: tiny\n"


def talkative(model, seed=0):
    """A freshly initialised tiny model only ever answers newlines (empty after strip) and barely
    sees the image; larger random weights make answers varied, non-empty and image-dependent."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model
