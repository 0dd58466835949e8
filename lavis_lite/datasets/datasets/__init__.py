"""Dataset classes: reading records, ``__getitem__`` and ``collater`` (not where files come from)."""
from lavis_lite.datasets.datasets.base_dataset import BaseDataset, load_image, read_annotation_file  # noqa: F401
from lavis_lite.datasets.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset  # noqa: F401
from lavis_lite.datasets.datasets.errors import DataError, ErrorPolicy  # noqa: F401
from lavis_lite.datasets.datasets.instruction_datasets import (  # noqa: F401
    IMAGE_TAG,
    InstructionDataset,
    collate_instruction,
)
from lavis_lite.datasets.datasets.vqa_datasets import VQADataset, VQAEvalDataset  # noqa: F401
