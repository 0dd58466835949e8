"""Data: dataset classes (datasets/), builders and the zoo (builders/), the demo generator (demo.py)."""
from lavis_lite.datasets import builders  # noqa: F401
from lavis_lite.datasets.builders import dataset_zoo, load_dataset  # noqa: F401
from lavis_lite.datasets.builders.base_dataset_builder import BaseDatasetBuilder  # noqa: F401
from lavis_lite.datasets.datasets import DataError  # noqa: F401
