"""Moved to lavis_lite/datasets/feature_cache_run.py (the cache's run-time wiring is data-side)."""
from lavis_lite.datasets.feature_cache_run import *  # noqa: F401,F403
from lavis_lite.datasets.feature_cache_run import (  # noqa: F401
    cache_for_model, feature_cache_settings, fill_cache, prepare_feature_cache, stage_modules,
    sync_frozen_stages_from_rank0)
