"""The central string-keyed registry: YAML names -> classes, plus named paths.

Feels like timm's model registry: decorators register, ``get_*_class`` resolves and
raises a helpful :class:`UnknownNameError` (with "did you mean ...?") instead of
returning ``None``, ``list_*`` gives sorted names.
"""
from __future__ import annotations

import difflib
import os
from typing import Callable

_KINDS = ("builder", "processor", "model", "task", "runner", "lr_scheduler")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists what is."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, available
        close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(available) if available else "(none registered)"
        self.message = f"Unknown {kind} name {name!r}.{hint} Registered {kind}s: {listing}."
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would otherwise show the message in quotes
        return self.message


def _base_class(kind: str):
    # Imported lazily: the base classes import the registry themselves.
    if kind == "builder":
        from lavis_lite.datasets.builders.base_dataset_builder import BaseDatasetBuilder
        return BaseDatasetBuilder
    if kind == "processor":
        from lavis_lite.processors.base_processor import BaseProcessor
        return BaseProcessor
    if kind == "model":
        from lavis_lite.models.base_model import BaseModel
        return BaseModel
    if kind == "task":
        from lavis_lite.tasks.base_task import BaseTask
        return BaseTask
    if kind == "runner":
        from lavis_lite.runners.runner_base import RunnerBase
        return RunnerBase
    return None  # lr schedulers only need a ``step`` method, checked below


class Registry:
    def __init__(self) -> None:
        self.mapping: dict[str, dict[str, type]] = {k: {} for k in _KINDS}
        self.paths: dict[str, str] = {}
        self.state: dict[str, object] = {}

    # ---- registration -------------------------------------------------
    def _register(self, kind: str, name: str, cls: type) -> type:
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {kind} name must be a non-empty string, got {name!r}")
        if not isinstance(cls, type):
            raise TypeError(f"Only classes can be registered as a {kind}; got {cls!r} for {name!r}")
        base = _base_class(kind)
        if base is not None and not issubclass(cls, base):
            raise TypeError(f"{cls.__qualname__} registered as {kind} {name!r} must subclass {base.__qualname__}")
        if kind == "lr_scheduler" and not callable(getattr(cls, "step", None)):
            raise TypeError(f"lr scheduler {name!r} ({cls.__qualname__}) needs a step(cur_epoch, cur_step) method")
        table = self.mapping[kind]
        old = table.get(name)
        if old is not None and old is not cls:
            if _same_definition(old, cls):
                # The same module imported twice (notebook + source tree, importlib reload):
                # harmless, the newest definition wins.
                table[name] = cls
                return cls
            raise KeyError(
                f"{kind} name {name!r} is already registered to {_qualified(old)}; "
                f"cannot register {_qualified(cls)} under it"
            )
        table[name] = cls
        return cls

    def _decorator(self, kind: str, name: str) -> Callable[[type], type]:
        def wrap(cls: type) -> type:
            return self._register(kind, name, cls)
        return wrap

    def register_builder(self, name: str):
        return self._decorator("builder", name)

    def register_processor(self, name: str):
        return self._decorator("processor", name)

    def register_model(self, name: str):
        return self._decorator("model", name)

    def register_task(self, name: str):
        return self._decorator("task", name)

    def register_runner(self, name: str):
        return self._decorator("runner", name)

    def register_lr_scheduler(self, name: str):
        return self._decorator("lr_scheduler", name)

    def register_path(self, name: str, path: str) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Path {name!r} must be a str or PathLike, got {type(path).__name__}")
        self.paths[name] = os.fspath(path)

    def register(self, name: str, obj: object) -> None:
        """Store a piece of global state (e.g. the merged config) under a dotted name."""
        self.state[name] = obj

    # ---- lookup --------------------------------------------------------
    def _get(self, kind: str, name: str) -> type:
        try:
            return self.mapping[kind][name]
        except KeyError:
            raise UnknownNameError(kind, name, sorted(self.mapping[kind])) from None

    def get_builder_class(self, name: str) -> type:
        return self._get("builder", name)

    def get_processor_class(self, name: str) -> type:
        return self._get("processor", name)

    def get_model_class(self, name: str) -> type:
        return self._get("model", name)

    def get_task_class(self, name: str) -> type:
        return self._get("task", name)

    def get_runner_class(self, name: str) -> type:
        return self._get("runner", name)

    def get_lr_scheduler_class(self, name: str) -> type:
        return self._get("lr_scheduler", name)

    def get_path(self, name: str) -> str:
        try:
            return self.paths[name]
        except KeyError:
            raise UnknownNameError("path", name, sorted(self.paths)) from None

    def get(self, name: str, default=None):
        return self.state.get(name, default)

    # ---- listings ------------------------------------------------------
    def list_models(self) -> list[str]:
        return sorted(self.mapping["model"])

    def list_datasets(self) -> list[str]:
        return sorted(self.mapping["builder"])

    def list_processors(self) -> list[str]:
        return sorted(self.mapping["processor"])

    def list_tasks(self) -> list[str]:
        return sorted(self.mapping["task"])

    def list_runners(self) -> list[str]:
        return sorted(self.mapping["runner"])

    def list_lr_schedulers(self) -> list[str]:
        return sorted(self.mapping["lr_scheduler"])

    def unregister(self, kind: str, name: str) -> None:
        """Remove a name (tests and interactive use)."""
        self.mapping[kind].pop(name, None)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _same_definition(a: type, b: type) -> bool:
    """True when ``b`` is a re-import of ``a``: same class name and source file
    (the module may have been imported under two names, e.g. via a notebook's sys.path)."""
    if a.__qualname__ != b.__qualname__:
        return False
    import inspect
    try:
        return os.path.realpath(inspect.getfile(a)) == os.path.realpath(inspect.getfile(b))
    except (TypeError, OSError):
        return False


registry = Registry()
