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
# The LAVIS image zoo's dataset classes (see builders/zoo_builders.py).
from lavis_lite.datasets.datasets.aok_vqa_datasets import AOKVQADataset, AOKVQAEvalDataset  # noqa: F401, E402, I001
from lavis_lite.datasets.datasets.imagefolder_datasets import ImageFolderDataset  # noqa: F401, E402
from lavis_lite.datasets.datasets.nocaps_datasets import NoCapsEvalDataset  # noqa: F401, E402
from lavis_lite.datasets.datasets.retrieval_datasets import RetrievalDataset, RetrievalEvalDataset  # noqa: F401, E402
from lavis_lite.datasets.datasets.snli_ve_datasets import SNLIVisualEntailmentDataset  # noqa: F401, E402
from lavis_lite.datasets.datasets.vqa_zoo_datasets import GQAEvalDataset, VGVQADataset, VQAEvalFilesDataset  # noqa: F401, E402
