"""Loading user components without editing lavis_lite.

Three ways, all ending in an import that runs the user's ``@registry.register_*``:
- a run YAML ``imports: [my_pkg.my_module, ./path/to/file.py, ./path/to/package_dir]``
  (relative paths are relative to the YAML file, then to the working directory);
- ``--import`` on train.py / evaluate.py (``lavis_lite.runners.launch``; relative to the
  working directory);
- the ``lavis_lite.plugins`` entry-point group of installed distributions, loaded at
  ``import lavis_lite``.

A package directory is imported under its own name (its parent goes on ``sys.path``), so
its relative imports work and its classes keep stable module names; a single ``.py`` file
is imported under a name derived from its path. Every failure raises
:class:`PluginImportError` naming the plugin.
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
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_package_dir(path: str):
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        raise PluginImportError(f"Plugin directory {path!r} is not a Python package (no __init__.py)")
    parent, name = os.path.split(path.rstrip(os.sep))
    if not name.isidentifier():
        raise PluginImportError(f"Plugin directory {path!r}: {name!r} is not a valid package name")
    existing = sys.modules.get(name)
    if existing is not None:
        origin = os.path.dirname(os.path.realpath(getattr(existing, "__file__", "") or ""))
        if origin == os.path.realpath(path):
            return existing
        raise PluginImportError(f"Plugin directory {path!r}: a different module named {name!r} is already "
                                f"imported (from {origin or 'a built-in'}); rename the package")
    if parent not in sys.path:
        sys.path.insert(0, parent)
    return importlib.import_module(name)


def _resolve_path(spec: str, base_dir: str | None) -> str:
    spec = os.path.expanduser(spec)
    if os.path.isabs(spec):
        return spec
    candidates = [os.path.join(base_dir, spec)] if base_dir else []
    candidates.append(os.path.abspath(spec))  # then the working directory
    for cand in candidates:
        if os.path.exists(cand):
            return os.path.abspath(cand)
    raise PluginImportError(f"Plugin {spec!r} not found; looked at {candidates}")


def looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec or spec.startswith((".", "~"))


def import_plugin(spec: str, base_dir: str | None = None):
    """Import one plugin: a dotted module name, a ``.py`` file or a package directory."""
    spec = str(spec).strip()
    if not spec:
        raise PluginImportError("Empty plugin name in 'imports' / --import")
    try:
        if looks_like_path(spec):
            path = _resolve_path(spec, base_dir)
            module = _import_package_dir(path) if os.path.isdir(path) else _import_file(path)
        else:
            module = importlib.import_module(spec)
    except PluginImportError:
        raise
    except Exception as err:
        raise PluginImportError(f"Could not import plugin {spec!r}: {type(err).__name__}: {err}") from err
    logger.debug("imported plugin %s", spec)
    return module


def import_plugins(specs: Iterable[str] | None, base_dir: str | None = None) -> list:
    if isinstance(specs, str):
        specs = [specs]
    return [import_plugin(str(s), base_dir=base_dir) for s in (specs or [])]


# ---- installed distributions ----------------------------------------------------
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
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            raise PluginImportError(
                f"Could not load plugin entry point {ep.name!r} = {ep.value!r} (distribution {dist!r}, group "
                f"{ENTRY_POINT_GROUP}): {type(err).__name__}: {err}"
            ) from err
        loaded.append(ep.name)
    return loaded
