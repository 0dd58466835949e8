"""Dataset builders: build_info -> files on disk -> {split: Dataset}. Importing registers them."""
from lavis_lite.datasets.builders.base_dataset_builder import BaseDatasetBuilder, register_dataset_builder  # noqa: F401
from lavis_lite.datasets.builders import dataset_builders, wds_builder, zoo_builders  # noqa: F401
globals().update(zoo_builders.LAVIS_NAMES)  # COCORetrievalBuilder, OKVQABuilder, ... as LAVIS exports them
from lavis_lite.datasets.builders import dataset_zoo  # noqa: F401
from lavis_lite.datasets.builders.dataset_zoo import load_dataset  # noqa: F401
from lavis_lite.datasets.builders import benchmark_builders  # noqa: F401,E402  (MME, MMBench, POPE, ScienceQA)
