from lavis_lite.runners.runner_base import RunnerBase  # noqa: F401
