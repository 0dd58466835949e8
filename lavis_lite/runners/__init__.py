from lavis_lite.runners.runner_base import RunnerBase  # noqa: F401
from lavis_lite.runners import runner_iter, deepspeed_runner  # noqa: F401
