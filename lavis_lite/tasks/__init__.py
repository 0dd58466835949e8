from lavis_lite.tasks.base_task import BaseTask  # noqa: F401
