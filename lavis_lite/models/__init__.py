from lavis_lite.models.base_model import BaseModel  # noqa: F401
