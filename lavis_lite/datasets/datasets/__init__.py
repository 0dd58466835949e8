"""Dataset classes: reading records, ``__getitem__`` and ``collater`` (not where files come from)."""
from lavis_lite.datasets.datasets.aok_vqa_datasets import (  # noqa: F401
    AOKVQADataset,
    AOKVQAEvalDataset,
)
from lavis_lite.datasets.datasets.base_dataset import (  # noqa: F401
    BaseDataset,
    load_image,
    read_annotation_file,
)
from lavis_lite.datasets.datasets.caption_datasets import (  # noqa: F401
    CaptionDataset,
    CaptionEvalDataset,
)
from lavis_lite.datasets.datasets.errors import DataError, ErrorPolicy  # noqa: F401
from lavis_lite.datasets.datasets.imagefolder_datasets import ImageFolderDataset  # noqa: F401
from lavis_lite.datasets.datasets.instruction_datasets import (  # noqa: F401
    IMAGE_TAG,
    InstructionDataset,
    collate_instruction,
)
from lavis_lite.datasets.datasets.nocaps_datasets import NoCapsEvalDataset  # noqa: F401
from lavis_lite.datasets.datasets.retrieval_datasets import (  # noqa: F401
    RetrievalDataset,
    RetrievalEvalDataset,
)
from lavis_lite.datasets.datasets.snli_ve_datasets import SNLIVisualEntailmentDataset  # noqa: F401
from lavis_lite.datasets.datasets.vqa_datasets import VQADataset, VQAEvalDataset  # noqa: F401
from lavis_lite.datasets.datasets.vqa_zoo_datasets import (  # noqa: F401
    GQAEvalDataset,
    VGVQADataset,
    VQAEvalFilesDataset,
)
