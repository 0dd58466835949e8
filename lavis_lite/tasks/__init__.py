from lavis_lite.tasks.base_task import BaseTask  # noqa: F401
from lavis_lite.tasks import image_text_pretrain, instruction_tuning  # noqa: F401
from lavis_lite.tasks import retrieval  # noqa: F401,E402
from lavis_lite.tasks import captioning, instruction_eval, vqa  # noqa: F401  (evaluation tasks)
from lavis_lite.tasks import mllm_benchmarks  # noqa: F401,E402  (MME, MMBench, POPE, ScienceQA)
from lavis_lite.tasks import classification, knowledge_vqa, nocaps  # noqa: F401,E402  (issue 21 recipes)
