"""LAVIS's image data sets, one line each (default YAML: configs/datasets/<name>/defaults.yaml,
card: docs/dataset_cards/<name>.md). The names are LAVIS's, so ``load_dataset("flickr30k")`` works
as it does there once the files are in place."""
from __future__ import annotations

from lavis_lite.datasets.builders.base_dataset_builder import register_dataset_builder
from lavis_lite.datasets.builders.imagefolder_builder import ImageFolderBuilder
from lavis_lite.datasets.builders.wds_builder import ImageTextWebDatasetBuilder
from lavis_lite.datasets.datasets.aok_vqa_datasets import (
    AOKVQADataset,
    AOKVQAEvalDataset,
)
from lavis_lite.datasets.datasets.caption_datasets import CaptionDataset
from lavis_lite.datasets.datasets.imagefolder_datasets import ImageFolderDataset
from lavis_lite.datasets.datasets.nocaps_datasets import NoCapsEvalDataset
from lavis_lite.datasets.datasets.retrieval_datasets import (
    RetrievalDataset,
    RetrievalEvalDataset,
)
from lavis_lite.datasets.datasets.snli_ve_datasets import SNLIVisualEntailmentDataset
from lavis_lite.datasets.datasets.vqa_datasets import VQADataset
from lavis_lite.datasets.datasets.vqa_zoo_datasets import (
    GQAEvalDataset,
    VGVQADataset,
    VQAEvalFilesDataset,
)
from lavis_lite.datasets.datasets.wds_datasets import WebDatasetStream

# Retrieval (Karpathy splits) and captioning evaluation.
CocoRetrievalBuilder = register_dataset_builder("coco_retrieval", RetrievalDataset, RetrievalEvalDataset)
Flickr30kBuilder = register_dataset_builder("flickr30k", RetrievalDataset, RetrievalEvalDataset)
NocapsBuilder = register_dataset_builder("nocaps", CaptionDataset, NoCapsEvalDataset)  # val / test only

# Question answering.
OkVqaBuilder = register_dataset_builder("ok_vqa", VQADataset, VQAEvalFilesDataset)
AokVqaBuilder = register_dataset_builder("aok_vqa", AOKVQADataset, AOKVQAEvalDataset)
GqaBuilder = register_dataset_builder("gqa", VQADataset, GQAEvalDataset, config_types={
    "balanced_val": "configs/datasets/gqa/defaults.yaml",
    "balanced_testdev": "configs/datasets/gqa/balanced_testdev.yaml"})
VgVqaBuilder = register_dataset_builder("vg_vqa", VGVQADataset)  # train only

# Image-text pairs for pretraining (train only).
VgCaptionBuilder = register_dataset_builder("vg_caption", CaptionDataset)
SbuCaptionBuilder = register_dataset_builder("sbu_caption", CaptionDataset)
ConceptualCaption3mBuilder = register_dataset_builder("conceptual_caption_3m", CaptionDataset)
ConceptualCaption12mBuilder = register_dataset_builder("conceptual_caption_12m", CaptionDataset)
Laion400mBuilder = register_dataset_builder("laion400M", WebDatasetStream, base=ImageTextWebDatasetBuilder)

# Classification.
SnliVeBuilder = register_dataset_builder("snli_ve", SNLIVisualEntailmentDataset)
ImagenetBuilder = register_dataset_builder("imagenet", ImageFolderDataset, base=ImageFolderBuilder)

# LAVIS's class names, so `from lavis.datasets.builders import OKVQABuilder` only changes its package.
LAVIS_NAMES = {
    "COCORetrievalBuilder": CocoRetrievalBuilder,
    "Flickr30kBuilder": Flickr30kBuilder,
    "NoCapsBuilder": NocapsBuilder,
    "OKVQABuilder": OkVqaBuilder,
    "AOKVQABuilder": AokVqaBuilder,
    "GQABuilder": GqaBuilder,
    "VGVQABuilder": VgVqaBuilder,
    "VGCaptionBuilder": VgCaptionBuilder,
    "SBUCaptionBuilder": SbuCaptionBuilder,
    "ConceptualCaption3MBuilder": ConceptualCaption3mBuilder,
    "ConceptualCaption12MBuilder": ConceptualCaption12mBuilder,
    "Laion400MBuilder": Laion400mBuilder,
    "SNLIVisualEntailmentBuilder": SnliVeBuilder,
    "ImageNetBuilder": ImagenetBuilder,
}
globals().update(LAVIS_NAMES)
