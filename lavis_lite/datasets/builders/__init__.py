from lavis_lite.datasets.builders.base_dataset_builder import BaseDatasetBuilder  # noqa: F401
