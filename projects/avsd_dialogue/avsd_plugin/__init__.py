"""AVSD-style video-grounded dialogue, built on lavis_lite only through its extension points.

Importing this package registers: builder ``avsd_dialogue``, processors ``gpt_video_ft`` and
``gpt_dialogue``, model ``gpt_dialogue`` and task ``dialogue``. Load it with
``imports: [./avsd_plugin]`` in a run YAML, ``--import projects/avsd_dialogue/avsd_plugin``,
or by installing projects/avsd_dialogue (entry point group ``lavis_lite.plugins``).
"""
from . import builder, model, processors, task  # noqa: F401
