from lavis_lite.processors.base_processor import BaseProcessor  # noqa: F401
