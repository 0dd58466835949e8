"""Loading user components without editing lavis_lite.

Three ways, all ending in an import that runs the user's ``@registry.register_*``:
- a run YAML ``imports: [my_pkg.my_module, ./path/to/file.py]``;
- ``--import`` on train.py / evaluate.py;
- the ``lavis_lite.plugins`` entry-point group of installed distributions.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from typing import Iterable

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lavis_lite.plugins"


class PluginImportError(ImportError):
    """An import of a named plugin failed; the message names the plugin."""


def _import_file(path: str):
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise PluginImportError(f"Plugin file {path!r} does not exist")
    # A stable module name per file, so importing it twice is a no-op.
    name = "lavis_lite_plugin_" + hashlib.md5(path.encode()).hexdigest()[:10] + "_" + \
        os.path.splitext(os.path.basename(path))[0]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(name, None)
        raise
    return module


def import_plugin(spec: str, base_dir: str | None = None):
    """Import one plugin: a dotted module name or a path to a .py file / package dir."""
    looks_like_path = spec.endswith(".py") or os.sep in spec or spec.startswith(".")
    try:
        if looks_like_path:
            path = spec if os.path.isabs(spec) else os.path.join(base_dir or os.getcwd(), spec)
            if not os.path.exists(path) and not os.path.isabs(spec):
                path = os.path.abspath(spec)  # fall back to the working directory
            if os.path.isdir(path):
                path = os.path.join(path, "__init__.py")
            return _import_file(path)
        return importlib.import_module(spec)
    except PluginImportError:
        raise
    except Exception as err:
        raise PluginImportError(f"Could not import plugin {spec!r}: {type(err).__name__}: {err}") from err


def import_plugins(specs: Iterable[str], base_dir: str | None = None) -> list:
    return [import_plugin(str(s), base_dir=base_dir) for s in specs]


_entry_points_loaded = False


def load_entry_point_plugins(force: bool = False) -> list[str]:
    """Import every ``lavis_lite.plugins`` entry point (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded and not force:
        return []
    _entry_points_loaded = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:
            raise PluginImportError(
                f"Could not load plugin entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP}: "
                f"{type(err).__name__}: {err}"
            ) from err
        loaded.append(ep.name)
    return loaded
