"""Layered configuration, as in LAVIS (later wins):

    model class default YAML  <  run YAML ``model:``
    builder default YAML      <  run YAML ``datasets.<name>:``
    run YAML ``run:``
    ``--options key=value``   over everything
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from lavis_lite.common.registry import registry

logger = logging.getLogger(__name__)

KNOWN_ROOTS = ("model", "datasets", "run", "imports")


from lavis_lite.common.run_schema import SchemaError  # noqa: E402


class ConfigError(SchemaError):
    """A configuration problem, naming the key and the file it was expected in."""


@dataclass
class ConfigArgs:
    cfg_path: str
    options: list[str] = field(default_factory=list)


def parse_options(options: Iterable[str] | None) -> DictConfig:
    """``["a.b=1", "c=[1,2]"]`` -> DictConfig with OmegaConf value parsing."""
    options = list(options or [])
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--options entry {opt!r} is not of the form key=value")
    return OmegaConf.from_dotlist(options)


class Config:
    def __init__(self, args: Any):
        self.cfg_path = os.path.abspath(args.cfg_path)
        if not os.path.isfile(self.cfg_path):
            raise ConfigError(f"Run config {args.cfg_path!r} does not exist")
        options = parse_options(getattr(args, "options", None))
        run_yaml = OmegaConf.load(self.cfg_path)
        roots = set(run_yaml.keys()) | set(KNOWN_ROOTS)
        for key in options.keys():
            if key not in roots:
                raise ConfigError(
                    f"--options key {key!r} has an unknown root; expected one of {sorted(roots)} "
                    f"(the sections of {self.cfg_path})"
                )
        # Plugins named by the run YAML must be imported before classes are looked up.
        imports = list(run_yaml.get("imports", []) or []) + list(options.get("imports", []) or [])
        if imports:
            from lavis_lite.common.plugins import import_plugins
            import_plugins(imports, base_dir=os.path.dirname(self.cfg_path))

        opt_model = options.get("model", None)
        model_cfg = self.build_model_config(run_yaml, opt_model, self.cfg_path)
        dataset_cfg = self.build_dataset_config(run_yaml, options.get("datasets", None), self.cfg_path)
        run_cfg = OmegaConf.create({"run": run_yaml.get("run", {})})
        if "task" not in run_cfg.run and "task" not in (options.get("run", {}) or {}):
            raise ConfigError(f"Missing required key 'run.task' in {self.cfg_path}")
        extra = {k: v for k, v in run_yaml.items() if k not in ("model", "datasets", "run")}
        self.config: DictConfig = OmegaConf.merge(
            OmegaConf.create(extra), run_cfg, model_cfg, dataset_cfg, options
        )
        self.check_schemas(options)
        registry.register("configuration", self)

    @classmethod
    def from_file(cls, cfg_path: str, options: Iterable[str] | None = None) -> "Config":
        return cls(ConfigArgs(cfg_path=cfg_path, options=list(options or [])))

    # ---- layers ----------------------------------------------------------
    @staticmethod
    def build_model_config(run_yaml: DictConfig, opt_model: DictConfig | None, cfg_path: str) -> DictConfig:
        model = run_yaml.get("model", None)
        if model is None:
            raise ConfigError(f"Missing required section 'model' in {cfg_path}")
        # --options win over the run YAML here too: they choose which default YAML is layered first
        arch = (opt_model or {}).get("arch", None) or model.get("arch", None)
        if arch is None:
            raise ConfigError(f"Missing required key 'model.arch' in {cfg_path}")
        model_cls = registry.get_model_class(arch)
        model_type = (opt_model or {}).get("model_type", None) or model.get("model_type", None)
        default_path = model_cls.default_config_path(model_type)  # raises listing the types
        defaults = OmegaConf.load(default_path)
        return OmegaConf.merge(
            {"model": defaults.get("model", {})},
            {"model": {"arch": arch, "model_type": model_type or model_cls.DEFAULT_MODEL_TYPE}},
            {"model": model},
        )

    @staticmethod
    def build_dataset_config(run_yaml: DictConfig, opt_datasets: DictConfig | None, cfg_path: str) -> DictConfig:
        datasets = run_yaml.get("datasets", None)
        if not datasets:
            return OmegaConf.create({"datasets": {}})
        merged = OmegaConf.create({"datasets": {}})
        for name, section in datasets.items():
            section = section if section is not None else OmegaConf.create({})
            builder_name = section.get("builder", name)
            try:
                builder_cls = registry.get_builder_class(builder_name)
            except KeyError as err:
                raise ConfigError(
                    f"Dataset section 'datasets.{name}' in {cfg_path} names no registered builder "
                    f"(set 'builder:' or use a registered name). {err}"
                ) from None
            data_type = section.get("type", "default")
            default_path = builder_cls.default_config_path(data_type)
            defaults = OmegaConf.load(default_path).get("datasets", {})
            # A builder's default YAML is keyed by its registered name.
            default_section = defaults.get(builder_name, None)
            if default_section is None and len(defaults) == 1:
                default_section = next(iter(defaults.values()))
            merged = OmegaConf.merge(
                merged,
                {"datasets": {name: default_section or {}}},
                {"datasets": {name: {"builder": builder_name}}},
                {"datasets": {name: section}},
            )
        return merged

    # ---- declared keys ------------------------------------------------------
    def check_schemas(self, options: DictConfig) -> None:
        """``run:`` and every ``datasets.<name>:`` against their declared keys (common/run_schema.py)."""
        from lavis_lite.common import run_schema

        run = self.config.get("run", None) or OmegaConf.create({})
        runner_cls = task_cls = None
        try:
            runner_cls = registry.get_runner_class(run.get("runner", "runner_base"))
            task_cls = registry.get_task_class(run.task)
        except KeyError:
            pass  # an unknown runner / task name is reported by the launcher with suggestions
        try:
            run_schema.check_run_section(run, runner_cls, task_cls, options, self.cfg_path)
            for name, section in (self.config.get("datasets", None) or {}).items():
                builder_cls = registry.get_builder_class(section.get("builder", name))
                schema = run_schema.dataset_schema(builder_cls, self._builder_defaults(builder_cls, section))
                run_schema.check_section(section, schema, f"datasets.{name}", options, self.cfg_path)
        except run_schema.SchemaError as err:
            raise ConfigError(str(err)) from None

    @staticmethod
    def _builder_defaults(builder_cls, section):
        try:
            path = builder_cls.default_config_path(section.get("type", "default"))
        except KeyError:
            return {}
        defaults = OmegaConf.load(path).get("datasets", {}) or {}
        return {k for part in defaults.values() if part for k in part}

    # ---- accessors -------------------------------------------------------
    @property
    def run_cfg(self) -> DictConfig:
        return self.config.run

    @property
    def model_cfg(self) -> DictConfig:
        return self.config.model

    @property
    def datasets_cfg(self) -> DictConfig:
        return self.config.datasets

    def to_dict(self) -> dict:
        return OmegaConf.to_container(self.config, resolve=True)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.config)

    def dump(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(self.to_yaml())

    def pretty_print(self) -> None:
        logger.info("\n===== Running parameters =====\n%s", OmegaConf.to_yaml(self.run_cfg))
        for name, ds in self.datasets_cfg.items():
            logger.info("\n===== Dataset %s =====\n%s", name, OmegaConf.to_yaml(ds))
        logger.info("\n===== Model =====\n%s", OmegaConf.to_yaml(self.model_cfg))

    def __repr__(self) -> str:
        return f"Config({self.cfg_path})"


def resolve_config_path(cls: type, rel_path: str) -> str:
    """Resolve a default-YAML path of ``cls``.

    Absolute paths stay; a relative path is tried under lavis_lite's library_root
    (built-in components) and then next to the module that defines ``cls``
    (plugins keep their YAML beside their code).
    """
    if os.path.isabs(rel_path):
        return rel_path
    import inspect
    candidates = [os.path.join(registry.get_path("library_root"), rel_path)]
    try:
        beside = os.path.join(os.path.dirname(inspect.getfile(cls)), rel_path)
    except (TypeError, OSError):
        beside = None
    if beside is not None:
        # A plugin's own YAML must not be shadowed by a built-in file of the same relative name.
        is_builtin = cls.__module__.split(".")[0] == "lavis_lite"
        candidates = candidates + [beside] if is_builtin else [beside] + candidates
    for cand in candidates:
        if os.path.isfile(cand):
            return cand
    raise ConfigError(f"Default config {rel_path!r} of {cls.__qualname__} not found; looked in {candidates}")
