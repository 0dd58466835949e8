"""Shared by tests: the tiny model's YAML, a way to make its answers informative, a mixed batch of conversations,
a task config."""
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

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


def mixed_conversations(repeat_answer: int = 3):
    """Four conversations with 1, 1, 2 and 0 images, one multi-turn, one long answer."""
    long_answer = "a red circle on a white background near the left edge of the picture " * repeat_answer
    return [
        [{"from": "human", "value": "<ImageHere> What colour is it?"}, {"from": "gpt", "value": "red"}],
        [{"from": "human", "value": "<ImageHere> Describe the image."}, {"from": "gpt", "value": long_answer}],
        [{"from": "human", "value": "<ImageHere><ImageHere> Same shape?"}, {"from": "gpt", "value": "yes"},
         {"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "no, blue and green"}],
        [{"from": "human", "value": "Hello there"}, {"from": "gpt", "value": "hi, how can I help"}],
    ]


def make_cfg(**run):
    """What ``Task.setup_task(cfg)`` reads: ``cfg.run_cfg`` (no progress bar) with ``run`` entries."""
    return SimpleNamespace(run_cfg=OmegaConf.create({"progress_bar": False, **run}))
