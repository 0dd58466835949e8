from lavis_lite.datasets import builders  # noqa: F401
