"""Declared schemas of the ``run:`` section and of ``datasets.<name>:`` sections.

The ``run:`` keys every runner and task understands are typed dataclasses below (``RunKeys``); a
task, runner or plugin declares its own extra keys as a dataclass in a ``run_schema`` class attribute
(inherited along the class hierarchy), e.g.::

    @dataclass
    class MyTaskKeys:
        beam_width: int = 4

    @registry.register_task("my_task")
    class MyTask(BaseTask):
        run_schema = MyTaskKeys

The keys are checked by merging the run section into the OmegaConf structured config of the union
of these dataclasses: an unknown key is an error with "did you mean", a value of the wrong type an
error naming the key, the value and where it came from (the run YAML or the ``--options`` entry).
Only the check uses the typed config; the job keeps the values as written.

A dataset section may hold the keys every builder reads (``DATASET_KEYS``), the keys of the builder's
default YAML, and the keys a builder declares in its own ``config_schema`` dataclass.
"""
import dataclasses
import typing
import difflib
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError


@dataclass
class RunKeys:
    """Keys of ``run:`` read by the runners (runner_base, runner_iter, deepspeed_runner) and BaseTask."""
    task: str = "?"
    runner: str = "runner_base"
    job_id: Optional[str] = None
    output_dir: str = "output"
    device: str = "cuda"
    seed: int = 42
    deterministic: bool = False
    evaluate: bool = False
    resume_ckpt_path: Optional[str] = None
    overwrite: bool = False  # --overwrite: move an earlier run in the job folder aside (runners/job_folder.py)
    # schedule
    max_epoch: Optional[int] = None
    iters: Optional[int] = None
    iters_per_inner_epoch: Optional[int] = None
    valid_every: int = 1
    keep_checkpoints: int = 2
    # data
    batch_size_train: Optional[int] = None
    batch_size_eval: Optional[int] = None
    num_workers: int = 0
    train_splits: List[str] = field(default_factory=list)
    valid_splits: List[str] = field(default_factory=list)
    test_splits: List[str] = field(default_factory=list)
    length_grouped_sampler: bool = False
    batch_group_key: Optional[str] = None  # records sharing this field's value share a batch (group_sampler.py)
    feature_cache: Any = None
    image_memory_cache: Any = None  # true | {splits, max_gb}: processed images kept in memory (datasets/image_cache.py)
    # optimisation
    lr_sched: str = "linear_warmup_cosine_lr"
    init_lr: Optional[float] = None
    min_lr: float = 0.0
    warmup_lr: float = -1.0
    warmup_steps: int = 0
    lr_decay_rate: Optional[float] = None
    weight_decay: float = 0.05
    lr_layer_decay: float = 1.0
    beta2: float = 0.999
    optimizer_impl: str = "auto"
    max_grad_norm: Optional[float] = None
    accum_grad_iters: int = 1
    amp: Any = False  # false | true | "bf16" | "fp16"
    find_unused_parameters: bool = False
    # distributed
    distributed: bool = True
    dist_url: str = "env://"
    dist_backend: Optional[str] = None
    dist_timeout_min: int = 30
    world_size: Optional[int] = None
    # logging
    log_freq: int = 50
    progress_bar: bool = True
    tensorboard: bool = False  # deprecated switch; run.loggers: [tensorboard]
    loggers: Any = None  # experiment trackers (common/trackers); each tracker's options sit under run.<name>
    # keys of LAVIS's own run configs, accepted so that LAVIS YAMLs load unchanged
    num_ans_candidates: Optional[int] = None
    inference_method: Optional[str] = None
    use_dist_eval_sampler: Optional[bool] = None
    report_metric: Optional[bool] = None
    max_iters: Optional[int] = None


@dataclass
class GenerationKeys:
    """Run keys of the generative evaluation tasks (captioning, vqa, instruction_eval)."""
    prompt: Optional[str] = None
    num_beams: Optional[int] = None
    max_new_tokens: Optional[int] = None
    max_len: Optional[int] = None
    min_length: Optional[int] = None
    min_len: Optional[int] = None
    repetition_penalty: Optional[float] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    do_sample: Optional[bool] = None


@dataclass
class CaptionKeys(GenerationKeys):
    caption_metrics: Optional[List[str]] = None
    caption_gt_files: Any = None


@dataclass
class VQAKeys(GenerationKeys):
    vqa_always_normalize: bool = False
    clean_answers: bool = True
    vqa_annotation_files: Any = None


@dataclass
class InstructionEvalKeys(GenerationKeys):
    agg_metric: str = "exact_acc"
    compute_loss: bool = True


@dataclass
class RetrievalKeys:
    k_test: int = 128
    text_batch_size: int = 256


@dataclass
class DeepSpeedKeys:
    deepspeed_config: Any = None  # a mapping or a JSON path
    deepspeed_shm_comm: bool = False


DATASET_KEYS = {  # read by every builder / by the runner
    "builder": Optional[str], "type": Optional[str], "data_type": Optional[str], "on_error": Optional[str],
    "max_skip_fraction": Optional[float], "sample_ratio": Optional[float], "build_info": Any,
    "vis_processor": Any, "text_processor": Any, "dataset_card": Any,
}


class SchemaError(ValueError):
    """A config key is unknown or its value has the wrong type (subclassed as ConfigError)."""


def _schemas_of(cls) -> list[type]:
    """The ``run_schema`` dataclasses along ``cls``'s MRO (base classes first)."""
    found = []
    for klass in reversed(getattr(cls, "__mro__", ())):
        schema = klass.__dict__.get("run_schema", None)
        if schema is not None and schema not in found:
            if not dataclasses.is_dataclass(schema):
                raise TypeError(f"{klass.__qualname__}.run_schema must be a dataclass, got {schema!r}")
            found.append(schema)
    return found


def merged_schema(classes) -> type:
    """One dataclass with the fields of ``RunKeys`` and of every class's ``run_schema``."""
    fields, seen = [], set()
    for schema in [RunKeys] + [s for cls in classes if cls is not None for s in _schemas_of(cls)]:
        hints = typing.get_type_hints(schema)  # string annotations (from __future__) resolved in their module
        for f in dataclasses.fields(schema):
            if f.name in seen:
                continue
            seen.add(f.name)
            default = {"default_factory": f.default_factory} if f.default_factory is not dataclasses.MISSING \
                else {"default": f.default}
            fields.append((f.name, hints.get(f.name, Any), field(**default)))
    return dataclasses.make_dataclass("RunSchema", fields)


def did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _origin(prefix: str, key: str, value, options, cfg_path: str) -> str:
    section = options
    for part in prefix.split("."):
        section = section.get(part, None) if section is not None and hasattr(section, "get") else None
    if section is not None and hasattr(section, "keys") and key in section:
        return f"the --options entry {prefix}.{key}={value}"
    return cfg_path


def _type_name(tp) -> str:
    """``Optional[int]`` -> "int (or null)", ``List[str]`` -> "List[str]"."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return f"{_type_name(args[0])} (or null)"
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def check_section(section, schema: type, prefix: str, options, cfg_path: str) -> None:
    """Unknown keys and wrongly typed values of ``section`` (a DictConfig) against ``schema``."""
    names = {f.name for f in dataclasses.fields(schema)}
    raw = OmegaConf.to_container(section, resolve=False) if OmegaConf.is_config(section) else dict(section)
    unknown = [k for k in raw if k not in names]
    if unknown:
        k = unknown[0]
        others = f" (and {', '.join(repr(u) for u in unknown[1:])})" if len(unknown) > 1 else ""
        raise SchemaError(f"Unknown key {prefix}.{k}{others} in {_origin(prefix, k, raw[k], options, cfg_path)}"
                          f"{did_you_mean(k, names)} (a task, runner or plugin declares extra keys in its "
                          f"run_schema / config_schema dataclass)")
    typed = OmegaConf.structured(schema)
    for key, value in raw.items():
        if isinstance(value, str) and "${" in value:
            continue  # interpolations are resolved later
        try:
            OmegaConf.merge(typed, {key: value})
        except (ValidationError, ConfigKeyError) as err:
            want = _type_name(schema.__dataclass_fields__[key].type)
            raise SchemaError(f"{prefix}.{key}={value!r} in {_origin(prefix, key, value, options, cfg_path)} "
                              f"has the wrong type: expected {want} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0]})") from None


def _with_tracker_sections(schema: type) -> type:
    """Every registered experiment tracker (built-in or plugin) may have an options section run.<name>."""
    try:
        from lavis_lite.common.trackers import TRACKERS
    except ImportError:
        return schema
    have = {f.name for f in dataclasses.fields(schema)}
    extra = [(name, Any, field(default=None)) for name in TRACKERS if name not in have]
    return dataclasses.make_dataclass("RunSchema", extra, bases=(schema,)) if extra else schema


def check_run_section(run_section, runner_cls, task_cls, options, cfg_path: str) -> None:
    """``run:`` against RunKeys + the runner's and the task's declared keys. Without a task class
    (unknown name: reported by the caller) unknown keys are not judged, types still are."""
    schema = merged_schema([runner_cls, task_cls])
    schema = _with_tracker_sections(schema)
    if task_cls is None:
        names = {f.name for f in dataclasses.fields(schema)}
        run_section = {k: v for k, v in OmegaConf.to_container(run_section, resolve=False).items() if k in names}
    check_section(run_section, schema, "run", options, cfg_path)


def dataset_schema(builder_cls, default_section) -> type:
    """DATASET_KEYS + the keys of the builder's default YAML + its ``config_schema`` dataclass."""
    fields = {k: (k, t, field(default=None)) for k, t in DATASET_KEYS.items()}
    for k in (default_section or {}):
        fields.setdefault(str(k), (str(k), Any, field(default=None)))
    declared = getattr(builder_cls, "config_schema", None)
    if declared is not None:
        hints = typing.get_type_hints(declared)
        for f in dataclasses.fields(declared):
            default = {"default_factory": f.default_factory} if f.default_factory is not dataclasses.MISSING \
                else {"default": f.default}
            fields[f.name] = (f.name, hints.get(f.name, Any), field(**default))
    return dataclasses.make_dataclass("DatasetSchema", list(fields.values()))
