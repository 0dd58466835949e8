"""Small registered components for the training tests (imported by tests and by run YAMLs via
``imports:``): a toy token model with a frozen embedding and dropout, and a toy dataset whose
samples have different numbers of supervised tokens (so token weighting matters)."""
import os

import torch
from omegaconf import OmegaConf
from torch import nn

from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from lavis_lite.models.base_model import BaseModel

HERE = os.path.dirname(os.path.abspath(__file__))
TOY_YAML = os.path.join(HERE, "toy_defaults.yaml")  # default YAMLs live next to their component


class ToyLM(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {"default": TOY_YAML}
    DEFAULT_MODEL_TYPE = "default"

    def __init__(self, vocab=16, dim=32, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.embed.requires_grad_(False)  # a frozen part, as the ViT / Q-Former are
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(dim))
        self.head = nn.Linear(dim, vocab)

    @classmethod
    def from_config(cls, cfg):
        return cls(vocab=int(cfg.get("vocab", 16)), dim=int(cfg.get("dim", 32)), dropout=float(cfg.get("dropout", 0.1)))

    def forward(self, samples):
        h = self.embed(samples["x"])
        logits = self.head(self.mlp(h)).float()
        y = samples["y"]
        mask = y != -100
        n = int(mask.sum())
        loss = nn.functional.cross_entropy(logits[mask], y[mask]) if n else logits.sum() * 0.0
        correct = int((logits.argmax(-1)[mask] == y[mask]).sum())
        return {"loss": loss, "n_tokens": n, "n_correct": correct}

    def count_supervised_tokens(self, samples):
        return int((samples["y"] != -100).sum())


registry.register_model("toy_lm")(ToyLM)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n, seq=8, vocab=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, vocab, (n, seq), generator=g)
        self.y = (self.x + 1) % vocab
        lengths = torch.randint(1, seq + 1, (n,), generator=g)  # supervised tokens per sample vary
        for i, k in enumerate(lengths.tolist()):
            self.y[i, k:] = -100

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "instance_id": i}

    def collater(self, items):
        return {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items]),
                "instance_id": [it["instance_id"] for it in items]}


class ToyBuilder(BaseDatasetBuilder):
    DATASET_CONFIG_DICT = {"default": TOY_YAML}

    def build_datasets(self):
        c = self.config
        return {"train": ToyDataset(int(c.get("n_train", 64)), seed=int(c.get("seed", 0))),
                "val": ToyDataset(int(c.get("n_val", 16)), seed=1000 + int(c.get("seed", 0)))}


registry.register_builder("toy_data")(ToyBuilder)


def write_run_yaml(path, runner="runner_base", **run):
    """A run YAML for the toy components; ``run`` entries override the defaults below."""
    cfg = {
        "imports": [os.path.abspath(__file__)],
        "model": {"arch": "toy_lm", "model_type": "default"},
        "datasets": {"toy_data": {"n_train": 64}},
        "run": {"task": "image_text_pretrain", "runner": runner, "lr_sched": "linear_warmup_cosine_lr",
                "init_lr": 1e-2, "min_lr": 1e-4, "warmup_steps": 2, "weight_decay": 0.0,
                "batch_size_train": 8, "batch_size_eval": 8, "max_epoch": 2, "seed": 7,
                "output_dir": os.path.join(os.path.dirname(path), "out"), "train_splits": ["train"],
                "valid_splits": [], "device": "cpu", "progress_bar": False, **run},
    }
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path
