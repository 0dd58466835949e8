from lavis_lite.models.base_model import BaseModel  # noqa: F401
from lavis_lite.models import blip2_qformer, blip2_feature_extractor  # noqa: F401,E402
