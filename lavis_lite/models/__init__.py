"""Models. Importing this package registers every built-in model; the entry points live here."""
from lavis_lite.models.base_model import BaseModel  # noqa: F401
from lavis_lite.models.blip2 import Blip2Base  # noqa: F401
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen  # noqa: F401
from lavis_lite.models.minigpt4 import MiniGPT4  # noqa: F401
from lavis_lite.models.loading import (  # noqa: F401
    load_model,
    load_model_and_preprocess,
    load_preprocess,
    model_zoo,
)
from lavis_lite.models import blip2_qformer, blip2_feature_extractor  # noqa: F401,E402
from lavis_lite.models import blip  # noqa: F401,E402  (blip_caption, blip_vqa, blip_feature_extractor, ...)
from lavis_lite.models import clip  # noqa: F401,E402
from lavis_lite.models import blip2_opt, blip2_t5, blip2_instruct  # noqa: F401,E402  (LAVIS's BLIP-2 LLM models)
