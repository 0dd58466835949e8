"""Model construction is seeded alike on every rank; data streams differ per rank."""
import torch
from omegaconf import OmegaConf

from lavis_lite.common import dist_utils
from lavis_lite.runners import runner_base


def _draw(monkeypatch, rank, per_rank):
    monkeypatch.setattr(dist_utils, "get_rank", lambda: rank)
    runner_base.setup_seeds(OmegaConf.create({"seed": 7}), per_rank=per_rank)
    return torch.rand(4)


def test_model_build_seed_is_rank_independent(monkeypatch):
    assert torch.equal(_draw(monkeypatch, 0, False), _draw(monkeypatch, 1, False))


def test_per_rank_seeds_differ(monkeypatch):
    assert not torch.equal(_draw(monkeypatch, 0, True), _draw(monkeypatch, 1, True))

