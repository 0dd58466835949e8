"""lavis_lite: a lean, registry-driven multimodal training framework around MiniGPT4-Qwen."""
from __future__ import annotations

import os

from omegaconf import OmegaConf

from lavis_lite.common.registry import registry

__version__ = "0.1.0"

_pkg_dir = os.path.dirname(os.path.abspath(__file__))
# Installed wheels carry configs/ inside the package; a source checkout keeps it at the root.
_library_root = _pkg_dir if os.path.isdir(os.path.join(_pkg_dir, "configs")) else os.path.dirname(_pkg_dir)
registry.register_path("library_root", _library_root)
registry.register_path("repo_root", os.path.dirname(_pkg_dir))

_default_cfg = OmegaConf.load(os.path.join(_library_root, "configs", "default.yaml"))
registry.register_path(
    "cache_root",
    os.path.expanduser(os.environ.get("LAVIS_LITE_CACHE_ROOT") or _default_cfg.env.cache_root),
)

# Register every built-in component (heavy optional dependencies stay lazy inside them).
from lavis_lite import processors, models, datasets, tasks, runners  # noqa: E402,F401
from lavis_lite.common import optims  # noqa: E402,F401

from lavis_lite.common.plugins import load_entry_point_plugins  # noqa: E402

load_entry_point_plugins()
