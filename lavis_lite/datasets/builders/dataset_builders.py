"""The registered data sets: one line each (default YAML: configs/datasets/<name>/defaults.yaml)."""
from __future__ import annotations

from lavis_lite.datasets.builders.base_dataset_builder import register_dataset_builder
from lavis_lite.datasets.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset
from lavis_lite.datasets.datasets.instruction_datasets import InstructionDataset
from lavis_lite.datasets.datasets.vqa_datasets import VQADataset, VQAEvalDataset

# Instruction data (InstructionDataset reads MiniGPT4-Qwen records and LLaVA conversations alike).
Minigpt4InstructionBuilder = register_dataset_builder("minigpt4_instruction", InstructionDataset)
LlavaInstructionBuilder = register_dataset_builder("llava_instruction", InstructionDataset)
LlavaPretrainBuilder = register_dataset_builder("llava_pretrain", InstructionDataset)
InstructionBuilder = register_dataset_builder("instruction", InstructionDataset)  # paths only from the run YAML

# COCO-format captions (Karpathy splits) and VQA.
CocoCaptionBuilder = register_dataset_builder("coco_caption", CaptionDataset, CaptionEvalDataset)
CaptionBuilder = register_dataset_builder("caption", CaptionDataset, CaptionEvalDataset)  # paths only from the run YAML
CocoVqaBuilder = register_dataset_builder("coco_vqa", VQADataset, VQAEvalDataset)
VqaBuilder = register_dataset_builder("vqa", VQADataset, VQAEvalDataset)  # paths only from the run YAML
